"""The argparse parser class of every `jaxllm` command line.

Two argparse defaults misread a user's typo: abbreviations (`--max-token 5` was taken as
`--max-tokens`), and a subcommand's unknown flag, which argparse hands back to the top parser so
that the error shows `jaxllm`'s usage instead of the subcommand's.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["StrictArgumentParser", "script_parser"]


class StrictArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser with `allow_abbrev=False` whose subcommand parsers are of this class too,
    each reporting its own unknown arguments with its own usage (exit status 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", StrictArgumentParser)
        return super().add_subparsers(**kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def script_parser(doc: str | None) -> StrictArgumentParser:
    """The parser of a script run as `python -m ...`: its module docstring, line breaks kept, is
    the `--help` text."""
    return StrictArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
