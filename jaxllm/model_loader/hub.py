"""Hugging Face hub ids (`org/name` or `name`) -> a local snapshot, offline first.

`resolve_hub_model(repo_id, revision)` looks in the local Hugging Face cache first and downloads
only when that snapshot is missing or lacks the weights and offline mode is off:

1. **Cache.** `huggingface_hub.snapshot_download(..., local_files_only=True)` finds the snapshot
   folder of `revision` (a branch or tag through `refs/<revision>`, or a full commit hash) in
   the cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`). It is used
   as it is when it holds the weights (`config.json` + `model.safetensors` or every shard of
   `model.safetensors.index.json`, or a single `.gguf` file); a cached `main` is not checked
   against the hub for a newer commit.
2. **Download**, unless `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set: the repo's file list,
   then only the root-level files jaxllm reads (`config.json`, `generation_config.json`, the
   safetensors weights and their index, tokenizer and chat template files) into the same cache.
   A repo without safetensors weights but with exactly one `.gguf` file gets that file alone
   (the GGUF carries its own config and tokenizer); several `.gguf` files are refused with their
   names, since jaxllm cannot tell which quantization is wanted.

The result is the snapshot folder (loaded as a Hugging Face folder; the tokenizer comes from the
same folder) or the `.gguf` file in it. Failures are `ModelNotFoundError`s naming the id, the
revision when one was given, and the cache.

The cache folder and the offline switch are read from the environment at every call and passed
to huggingface_hub explicitly: `huggingface_hub.constants` reads them once, when the package is
first imported, so a variable set later (by a test, or by a program before it builds an `LLM`)
would otherwise go unseen. The offline setting huggingface_hub read at import is honoured too.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

from jaxllm.model_loader.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

__all__ = ["hub_cache_dir", "hub_offline_variable", "is_hub_id", "resolve_hub_model"]

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# Root-level files besides the weights that jaxllm reads (config, sampling defaults, tokenizer,
# chat template), fetched when the repo has them.
_METADATA = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_PART = r"\w(?:[\w.-]*\w)?"  # letters, digits, '_', '-', '.'; starts and ends with a word char
_REPO_ID = re.compile(rf"(?:{_PART}/)?{_PART}")
_TRUE = ("1", "ON", "YES", "TRUE")


def is_hub_id(model: str) -> bool:
    """Whether `model` is shaped like a hub model id: `name` or `org/name` (at most 96 characters
    of letters, digits, '_', '-', '.'; no '--' or '..'; not ending in .git). A string ending in
    .gguf is taken for a (missing) file, not an id."""
    return (
        len(model) <= 96
        and _REPO_ID.fullmatch(model) is not None
        and "--" not in model
        and ".." not in model
        and not model.endswith((".git", ".gguf"))
    )


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder, as huggingface_hub resolves it, from the environment
    now: HF_HUB_CACHE (or the older HUGGINGFACE_HUB_CACHE), else HF_HOME/hub, else
    XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    folder = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not folder:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "huggingface",
        )
        folder = os.path.join(home, "hub")
    return os.path.abspath(os.path.expanduser(os.path.expandvars(folder)))


def hub_offline_variable() -> str | None:
    """The variable that forbids downloads (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), read now;
    also HF_HUB_OFFLINE when huggingface_hub saw it set at import. None: downloads allowed."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in _TRUE:
            return name
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE" if getattr(constants, "HF_HUB_OFFLINE", False) else None


def _describe(repo_id: str, revision: str | None) -> str:
    return f"model {repo_id!r}" + (f" (revision {revision!r})" if revision is not None else "")


def _local_model(folder: str) -> tuple[str | None, str]:
    """(what to load in a snapshot folder, or None; what it lacks when None). The folder itself
    when it holds config.json and every safetensors weight file, else its only .gguf file.
    Several .gguf files and no safetensors weights: a ValueError naming them."""
    has_config = os.path.isfile(os.path.join(folder, "config.json"))
    index = os.path.join(folder, _INDEX)
    missing = ""
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: cannot read the weight map: {e}") from e
        absent = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if not absent and has_config:
            return folder, ""
        if absent:
            missing = f"{len(absent)} of the {len(shards)} weight files listed in {_INDEX}"
    elif os.path.isfile(os.path.join(folder, _SINGLE)):
        if has_config:
            return folder, ""
    else:
        ggufs = sorted(n for n in os.listdir(folder) if n.endswith(".gguf"))
        if len(ggufs) == 1:
            return os.path.join(folder, ggufs[0]), ""
        if ggufs:
            raise ValueError(
                f"{folder}: holds {len(ggufs)} .gguf files ({', '.join(ggufs)}) and no "
                "safetensors weights; pass the path of the one to load"
            )
        missing = f"the weights ({_SINGLE}, {_INDEX} or a .gguf file)"
    if not has_config:
        missing = "config.json" + (f" and {missing}" if missing else "")
    return None, missing


def _files_to_fetch(repo_id: str, files: list[str], read_index: Callable[[], dict]) -> list[str]:
    """The files of a hub repo (its listing `files`) that jaxllm reads, root level only:
    metadata and safetensors weights (the index's shards, else model.safetensors), else the one
    .gguf file. `read_index()` fetches and parses model.safetensors.index.json."""
    root = {f for f in files if "/" not in f}
    metadata = sorted(root.intersection(_METADATA))
    if _INDEX in root:
        weight_map = read_index().get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"hub repository {repo_id!r}: {_INDEX} has no weight_map")
        return [*metadata, _INDEX, *sorted(set(weight_map.values()))]
    if _SINGLE in root:
        return [*metadata, _SINGLE]
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if len(ggufs) == 1 and "/" not in ggufs[0]:
        return ggufs  # the GGUF holds its config and tokenizer: nothing else is read
    if ggufs:
        raise ValueError(
            f"hub repository {repo_id!r} holds no safetensors weights but {len(ggufs)} .gguf "
            f"files ({', '.join(ggufs)}); download the one you want (`hf download {repo_id} "
            "FILE.gguf`) and pass its path as the model"
        )
    raise ModelNotFoundError(
        f"hub repository {repo_id!r} holds neither safetensors weights ({_SINGLE} or {_INDEX}) "
        "nor a .gguf file, the formats jaxllm reads"
    )


def _hub_error(err: Exception, repo_id: str, revision: str | None, cache: str) -> Exception:
    """A ModelNotFoundError for an error of a hub call (unknown repo or revision, gated repo,
    network failure)."""
    from huggingface_hub import utils as hub_utils

    def kind(name: str) -> type[BaseException] | tuple[()]:
        return getattr(hub_utils, name, ())  # () matches nothing in isinstance

    what = _describe(repo_id, revision)
    if isinstance(err, kind("GatedRepoError")):
        return ModelNotFoundError(
            f"{what} is a gated repository on the Hugging Face hub: accept its terms on "
            f"https://huggingface.co/{repo_id} and log in (`hf auth login`, or set HF_TOKEN)"
        )
    if isinstance(err, kind("RevisionNotFoundError")):
        return ModelNotFoundError(
            f"{what}: the Hugging Face hub repository {repo_id!r} has no revision "
            f"{revision or 'main'!r} (give a branch, a tag or a full commit hash)"
        )
    if isinstance(err, kind("RepositoryNotFoundError")):
        return ModelNotFoundError(
            f"{what} is not a local path, and the Hugging Face hub has no repository "
            f"{repo_id!r} (or it is private: log in with `hf auth login`, or set HF_TOKEN)"
        )
    return ModelNotFoundError(
        f"{what} is not in the local Hugging Face cache ({cache}) and could not be downloaded "
        f"({type(err).__name__}: {err}); check the network (and HF_ENDPOINT), or fetch it "
        f"where the hub is reachable (`hf download {repo_id}`) and set HF_HUB_OFFLINE=1 here"
    )


def _cached_snapshot(repo_id: str, revision: str | None, cache: str) -> str | None:
    """The cached snapshot folder of `revision`, or None; no network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        # allow_patterns=[]: only the folder is wanted here. jaxllm fetches a subset of a repo's
        # files, which huggingface_hub would call an incomplete snapshot; `_local_model` checks
        # for the files jaxllm reads instead.
        return snapshot_download(
            repo_id, revision=revision, cache_dir=cache, local_files_only=True, allow_patterns=[]
        )
    except LocalEntryNotFoundError:
        return None


def _download(repo_id: str, revision: str | None, cache: str) -> str:
    """Fetch the files jaxllm reads of `repo_id` at `revision` into `cache`; the snapshot folder."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    def hub(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as e:  # unknown repo or revision, gated, network down, hub down
            raise _hub_error(e, repo_id, revision, cache) from e

    def read_index() -> dict:
        path = hub(hf_hub_download, repo_id, _INDEX, revision=revision, cache_dir=cache)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"hub repository {repo_id!r}: cannot read {_INDEX}: {e}") from e

    files = hub(HfApi().list_repo_files, repo_id, revision=revision)
    wanted = _files_to_fetch(repo_id, files, read_index)
    logger.info("downloading %s of %s into %s", ", ".join(wanted), repo_id, cache)
    patterns = [glob.escape(name) for name in wanted]  # exact names as fnmatch patterns
    return hub(
        snapshot_download, repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns
    )


def resolve_hub_model(repo_id: str, revision: str | None = None) -> str:
    """The local path to load for hub model `repo_id` at `revision` (a branch, tag or commit
    hash; None: main): its snapshot folder, or the .gguf file in it (see the module doc)."""
    cache = hub_cache_dir()
    what = _describe(repo_id, revision)
    folder = _cached_snapshot(repo_id, revision, cache)
    missing = ""
    if folder is not None:
        path, missing = _local_model(folder)
        if path is not None:
            logger.info("%s: the cached snapshot %s", what, path)
            return path
    offline = hub_offline_variable()
    if offline is not None:
        fix = (
            f"fetch it where the hub is reachable (`hf download {repo_id}"
            + (f" --revision {revision}" if revision is not None else "")
            + "`), or point HF_HUB_CACHE or HF_HOME at a cache that holds it"
        )
        if folder is None:
            raise ModelNotFoundError(
                f"{what} is not a local path, and not in the local Hugging Face cache ({cache}), "
                f"and {offline}=1 forbids downloading it; {fix}"
            )
        raise ModelNotFoundError(
            f"{what}: its cached snapshot {folder} lacks {missing}, and {offline}=1 forbids "
            f"downloading it; {fix}"
        )
    folder = _download(repo_id, revision, cache)
    path, missing = _local_model(folder)
    if path is None:
        raise ModelNotFoundError(f"{what}: the downloaded snapshot {folder} lacks {missing}")
    return path
