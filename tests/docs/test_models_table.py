"""docs/models.md's table of supported architectures is the registry's: the same architectures,
each with the module that runs it, and an unknown one is refused naming them all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jaxllm.models.registry import (
    check_architecture,
    get_model_class,
    model_module,
    supported_architectures,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def _table_rows() -> dict[str, list[str]]:
    """architecture -> its row's cells, from the table under '## Supported architectures'."""
    text = DOC.read_text()
    section = text.split("## Supported architectures", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if line.startswith("|") else None
        if m:
            rows[m.group(1)] = cells
    return rows


def test_table_lists_exactly_the_registered_architectures():
    assert sorted(_table_rows()) == supported_architectures()


def test_table_names_each_architectures_module():
    for arch, cells in _table_rows().items():
        assert cells[1] == f"`{model_module(arch).__name__}`", arch
        assert get_model_class(arch).__module__ == model_module(arch).__name__


def test_unsupported_architecture_is_named_with_the_supported_list():
    with pytest.raises(ValueError) as e:
        check_architecture("FalconForCausalLM", "some/config.json")
    msg = str(e.value)
    assert "FalconForCausalLM" in msg and "some/config.json" in msg
    assert all(arch in msg for arch in supported_architectures())
