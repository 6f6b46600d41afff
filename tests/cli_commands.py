"""Every command path of the `dftune` parser (`[]`, `["data"]`, `["data", "check"]`, ...), walked from argparse's
own subparser tree, so a new subcommand is covered by the `--help` tests without a list to update."""

from __future__ import annotations

import argparse

from dftune.cli.main import build_parser


def command_paths(parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """`prefix` and every subcommand path below it, parents before children, names sorted."""
    parser = build_parser() if parser is None else parser
    paths = [list(prefix)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in sorted(action.choices.items()):
                paths += command_paths(child, (*prefix, name))
    return paths
