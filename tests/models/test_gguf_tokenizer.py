"""jaxllm's torch-free GGUF tokenizer against transformers' own (`AutoTokenizer` with `gguf_file=`).

References: `AutoTokenizer.from_pretrained(folder, gguf_file=...)` (needs torch, which the test env
has) on the SmolLM2 GGUF and on small GGUFs written here: a qwen2 file (Qwen2Tokenizer class, qwen2
split regex, add_bos/add_eos set, no unk/pad) and a SentencePiece ("llama" model) file whose merges
come from scores. A subprocess with torch made unimportable checks the load works without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gguf
import pytest
from loader_helpers import write_gguf
from transformers import AutoTokenizer

from jaxllm.model_loader.gguf_tokenizer import load_gguf_tokenizer
from jaxllm.process_lifetime import kill_with_parent

TEXTS = [
    "Hello world",
    "",
    " leading space, trailing space ",
    "The quick brown fox jumps over the lazy dog. 1234567890 3.14159 -42",
    "I'm sure they'll say we've done it, don't you think? IT'S FINE.",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n\tif x != y: pass\n",
    '#include <stdio.h>\nint main() { printf("%d\\n", 1<<3); return 0; }',
    "Grüße aus Köln, café crème, naïve façade, Ærøskøbing",
    "Привет, мир! Как дела?",
    "你好，世界！今天天气很好。",
    "こんにちは世界、カタカナとひらがな",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "안녕하세요 세계",
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✅",
    "multiple   spaces\n\n\nnew lines\r\nwindows\t\ttabs",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>x<file_sep>y<|im_end|>",
    "text<|im_start|>glued<|im_end|>text <|im_start|> spaced",
    "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
    "a" * 50 + " " + "ab" * 30,
]

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2? Ответ по-русски 🙂"},
    {"role": "assistant", "content": "Четыре."},
    {"role": "user", "content": "And in code?\n```py\nprint(2 + 2)\n```"},
]


def hf_reference(path: str):
    folder, name = os.path.split(path)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def ids_of(out) -> list:
    """apply_chat_template(tokenize=True) gives ids or a BatchEncoding depending on version."""
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


def assert_same_tokenizer(mine, ref, texts=TEXTS) -> None:
    assert type(mine) is type(ref)
    assert len(mine) == len(ref) and mine.get_vocab() == ref.get_vocab()
    assert mine.backend_tokenizer.to_str() == ref.backend_tokenizer.to_str()
    for attr in (
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "bos_token_id",
        "eos_token_id",
        "unk_token_id",
        "pad_token_id",
        "add_bos_token",
        "add_eos_token",
        "all_special_tokens",
        "all_special_ids",
        "chat_template",
    ):
        assert getattr(mine, attr) == getattr(ref, attr), attr
    assert {i: str(t) for i, t in mine.added_tokens_decoder.items()} == {
        i: str(t) for i, t in ref.added_tokens_decoder.items()
    }
    for text in texts:
        got, want = mine(text)["input_ids"], ref(text)["input_ids"]
        assert got == want, text
        assert mine.encode(text, add_special_tokens=False) == ref.encode(
            text, add_special_tokens=False
        )
        assert mine.tokenize(text) == ref.tokenize(text), text
        for skip in (False, True):
            assert mine.decode(want, skip_special_tokens=skip) == ref.decode(
                want, skip_special_tokens=skip
            )
    batch_mine = mine(texts[:4], padding=True) if ref.pad_token is not None else None
    if batch_mine is not None:
        batch_ref = ref(texts[:4], padding=True)
        assert batch_mine["input_ids"] == batch_ref["input_ids"]
        assert batch_mine["attention_mask"] == batch_ref["attention_mask"]


# ----------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smol_reader(smollm2_path):
    return gguf.GGUFReader(smollm2_path)


@pytest.fixture(scope="module")
def smol(smollm2_path, smol_reader):
    return load_gguf_tokenizer(smollm2_path, smol_reader)


@pytest.fixture(scope="module")
def smol_ref(smollm2_path):
    return hf_reference(smollm2_path)


def test_smollm2_matches_transformers(smol, smol_ref):
    assert_same_tokenizer(smol[0], smol_ref)


def test_smollm2_special_tokens_and_template(smol, smol_ref, smol_reader):
    tok, template = smol
    meta = {
        k: smol_reader.fields[k].contents()
        for k in smol_reader.fields
        if k.startswith("tokenizer.")
    }
    tokens = meta["tokenizer.ggml.tokens"]
    assert tok.bos_token_id == meta["tokenizer.ggml.bos_token_id"] == smol_ref.bos_token_id
    assert tok.eos_token_id == meta["tokenizer.ggml.eos_token_id"] == smol_ref.eos_token_id
    assert tok.unk_token_id == meta["tokenizer.ggml.unknown_token_id"] == smol_ref.unk_token_id
    assert tok.pad_token_id == meta["tokenizer.ggml.padding_token_id"] == smol_ref.pad_token_id
    assert tok.convert_tokens_to_ids("<|im_start|>") == tokens.index("<|im_start|>")
    assert (
        template == meta["tokenizer.chat_template"] == smol_ref.chat_template == tok.chat_template
    )
    # every control token of the file is special and stays whole
    control = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == 3]
    special = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    assert control and set(control) <= special
    text = "".join(control)
    assert tok.encode(text, add_special_tokens=False) == [tokens.index(t) for t in control]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm2_chat_template(smol, smol_ref, add_generation_prompt):
    tok = smol[0]
    for conv in (CONVERSATION, CONVERSATION[1:2]):  # with and without a system message
        kw = dict(add_generation_prompt=add_generation_prompt)
        text = tok.apply_chat_template(conv, tokenize=False, **kw)
        assert text == smol_ref.apply_chat_template(conv, tokenize=False, **kw)
        assert text.startswith("<|im_start|>system\n")
        assert text.endswith("<|im_start|>assistant\n") == add_generation_prompt
        assert ids_of(tok.apply_chat_template(conv, tokenize=True, **kw)) == ids_of(
            smol_ref.apply_chat_template(conv, tokenize=True, **kw)
        )


def test_smollm2_decode_id_sweep(smol, smol_ref):
    """Arbitrary id sequences (partial UTF-8 byte tokens included) decode the same."""
    n = len(smol_ref)
    for start, step in ((0, 97), (5, 1), (20000, 13), (n - 300, 7)):
        ids = list(range(start, min(n, start + 300 * step), step))
        for skip in (False, True):
            assert smol[0].decode(ids, skip_special_tokens=skip) == smol_ref.decode(
                ids, skip_special_tokens=skip
            )


def test_loads_without_torch(smollm2_path, smol_ref):
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from jaxllm.model_loader.gguf_tokenizer import load_gguf_tokenizer\n"
        f"tok, template = load_gguf_tokenizer({smollm2_path!r})\n"
        "assert sys.modules['torch'] is None\n"
        "print(json.dumps({'ids': tok('Hello world')['input_ids'], 'template': template,"
        " 'eos': tok.eos_token_id, 'chat': tok.apply_chat_template("
        "[{'role': 'user', 'content': 'Hi'}], tokenize=False, add_generation_prompt=True)}))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        preexec_fn=kill_with_parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ids"] == smol_ref("Hello world")["input_ids"] and out["ids"]
    assert out["template"] == smol_ref.chat_template
    assert out["eos"] == smol_ref.eos_token_id
    assert out["chat"] == smol_ref.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )


# ----------------------------------------------------------------------------- written GGUFs


def write_tokenizer_gguf(path, arch: str, meta: dict) -> None:
    """A GGUF holding only metadata (the tokenizer never looks at tensors)."""
    write_gguf(path, arch, meta, {})


def model_meta(arch: str) -> dict:
    return {
        f"{arch}.block_count": 1,
        f"{arch}.context_length": 128,
        f"{arch}.embedding_length": 64,
        f"{arch}.feed_forward_length": 128,
        f"{arch}.attention.head_count": 4,
        f"{arch}.attention.head_count_kv": 2,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        "general.name": "tokenizer test",
    }


def test_qwen2_gguf_matches_transformers(tmp_path, smol_reader):
    """Byte-level BPE under the qwen2 architecture: Qwen2Tokenizer, qwen2 split regex, BOS and EOS
    added, no unk/pad ids in the file."""
    src = smol_reader.fields
    meta = model_meta("qwen2") | {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": src["tokenizer.ggml.tokens"].contents(),
        "tokenizer.ggml.token_type": src["tokenizer.ggml.token_type"].contents(),
        "tokenizer.ggml.merges": src["tokenizer.ggml.merges"].contents(),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": True,
        "tokenizer.chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}",
    }
    path = tmp_path / "qwen2-tok.gguf"
    write_tokenizer_gguf(path, "qwen2", meta)
    mine, template = load_gguf_tokenizer(str(path))
    ref = hf_reference(str(path))
    assert type(ref).__name__ == "Qwen2Tokenizer"
    assert_same_tokenizer(mine, ref)
    ids = mine("123456 digits")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2  # add_bos_token / add_eos_token honoured
    assert template == meta["tokenizer.chat_template"]
    for gen in (False, True):
        assert mine.apply_chat_template(
            CONVERSATION, tokenize=False, add_generation_prompt=gen
        ) == ref.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen)


def test_sentencepiece_gguf_matches_transformers(tmp_path):
    """A SentencePiece ("llama" model) vocabulary with byte fallback and no merges list: merges
    come from the scores, and BOS is added by default since the file has no add_bos_token."""
    pieces = [
        "\u2581",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "H",
        "W",
        "!",
        "\u2581h",
        "he",
        "ll",
        "lo",
        "\u2581he",
        "llo",
        "\u2581hello",
        "\u2581w",
        "or",
        "\u2581wor",
        "ld",
        "\u2581world",
        "\u2581W",
        "\u2581H",
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    meta = model_meta("llama") | {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    path = tmp_path / "spm-tok.gguf"
    write_tokenizer_gguf(path, "llama", meta)
    mine, template = load_gguf_tokenizer(str(path))
    ref = hf_reference(str(path))
    texts = ["hello world", "Hello World!", " hello  world", "héllo wörld 😀", "<s>hello</s>", ""]
    assert_same_tokenizer(mine, ref, texts)
    assert mine.add_bos_token is True and mine("hello")["input_ids"][0] == 1
    assert template is None and mine.chat_template is None


# ----------------------------------------------------------------------------- bad input


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_gguf_tokenizer(str(tmp_path / "missing.gguf"))
    notgguf = tmp_path / "x.gguf"
    notgguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_gguf_tokenizer(str(notgguf))
    no_vocab = tmp_path / "novocab.gguf"
    write_tokenizer_gguf(no_vocab, "llama", model_meta("llama"))
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        load_gguf_tokenizer(str(no_vocab))
    bad_id = tmp_path / "badid.gguf"
    write_tokenizer_gguf(
        bad_id,
        "llama",
        model_meta("llama")
        | {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.eos_token_id": 7,
        },
    )
    with pytest.raises(ValueError, match="eos_token_id = 7 is outside the vocabulary of 3"):
        load_gguf_tokenizer(str(bad_id))
    bad_model = tmp_path / "badmodel.gguf"
    write_tokenizer_gguf(
        bad_model,
        "llama",
        model_meta("llama")
        | {"tokenizer.ggml.model": "wordpiece-ish", "tokenizer.ggml.tokens": ["a", "b"]},
    )
    with pytest.raises(ValueError, match="cannot build the tokenizer.*wordpiece-ish"):
        load_gguf_tokenizer(str(bad_model))
