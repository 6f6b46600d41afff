"""README.md's objective and key tables and docs/keys.md, generated from the code that defines them.

    python tools/docs_tables.py          # rewrite the generated blocks (make docs)
    python tools/docs_tables.py --check  # exit 1 when a page differs from the code (tests/docs runs it)

Each generated block sits between `<!-- generated: NAME (make docs) -->` and `<!-- end: NAME -->`; the text
around it is written by hand. The objectives come from the registry (`dftune.losses.OBJECTIVES`), the keys from
the dataclasses `dftune train` parses (`dftune.config.parse.sections`), so a new objective, setting or key
appears here the moment it exists, and a test fails until the pages are regenerated.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from dftune.config.data_args import DataArguments
from dftune.config.method_args import MethodArguments
from dftune.config.model_args import ModelArguments
from dftune.config.number_keys import ranges_of
from dftune.config.objective_args import ObjectiveArguments
from dftune.config.reliability_args import ReliabilityArguments
from dftune.losses import OBJECTIVES, Objective
from dftune.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
NORMALISERS = {"tokens": "target tokens of the whole accumulated batch", "samples": "samples"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _keys(objective: Objective) -> list[str]:
    return [s.key for s in objective.settings] + ([objective.alias] if objective.alias else [])


def objective_table() -> str:
    """One row per registered objective: its formula, normaliser, stages and config keys."""
    rows = ["| objective | per-token loss | normalised by | stages | keys |", "|---|---|---|---|---|"]
    for name, objective in OBJECTIVES.items():
        keys = ", ".join(f"`{key}`" for key in _keys(objective)) or "-"
        stages = " / ".join(sorted(objective.stages))
        rows.append(f"| `{name}` | `{_cell(objective.formula)}` | {NORMALISERS[objective.normalise_by]} | {stages} "
                    f"| {keys} |")
    return "\n".join(rows) + "\n"


def _own_fields(section: type) -> list[Field]:
    """The init fields `section` declares itself (MethodArguments without the objective keys it inherits)."""
    inherited = {f.name for f in fields(ObjectiveArguments)} if section is MethodArguments else set()
    return [f for f in fields(section) if f.init and f.name not in inherited]


def _choices(owner: type, f: Field) -> list[str]:
    """The values a key takes when it is a choice (`Literal[...]`, optionally `| None`, or declared choices)."""
    if "choices" in f.metadata:
        return [str(c) for c in f.metadata["choices"]]
    if f.name == "stage":  # its choices are the stage registry's, which parse sets on the parser
        return list(STAGES)
    kind = typing.get_type_hints(owner)[f.name]
    options = (kind,) if typing.get_origin(kind) is typing.Literal else typing.get_args(kind)
    literal = [a for a in options if typing.get_origin(a) is typing.Literal]
    return [str(c) for c in typing.get_args(literal[0])] if literal else []


def _sections() -> list[tuple[str, type, list[Field]]]:
    """(title, dataclass, its fields) in the order `dftune train --help` shows them, objective keys per objective."""
    listed: list[tuple[str, type, list[Field]]] = [("the model", ModelArguments, _own_fields(ModelArguments)),
                                                   ("the method", MethodArguments, _own_fields(MethodArguments))]
    by_name = {f.name: f for f in fields(ObjectiveArguments)}
    for name, objective in OBJECTIVES.items():
        if _keys(objective):
            listed.append((f"loss: {name}", ObjectiveArguments, [by_name[key] for key in _keys(objective)]))
    listed += [("the data ([docs/data.md](docs/data.md))", DataArguments, _own_fields(DataArguments)),
               ("reliability ([docs/reliability.md](docs/reliability.md))", ReliabilityArguments,
                _own_fields(ReliabilityArguments))]
    listed += [(f"stage: {name}", stage.arguments, _own_fields(stage.arguments)) for name, stage in STAGES.items()]
    return [entry for entry in listed if entry[2]]


def _setting_defaults() -> dict[str, Any]:
    """The declared default of each objective key (not the environment's: the page must not depend on it)."""
    return {s.key: s.default for o in OBJECTIVES.values() for s in o.settings}


def _default(f: Field) -> str:
    declared = _setting_defaults()
    if f.name in declared:
        value = declared[f.name]
    elif f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "required"
    return "-" if value is None else f"`{value}`"


def key_table() -> str:
    """README's compact table: one row per section, its keys (with their choices where they are few)."""
    rows = ["| keys | what they set |", "|---|---|"]
    for title, owner, section_fields in _sections():
        keys = []
        for f in section_fields:
            choices = _choices(owner, f)
            keys.append(f"`{f.name}` ({' / '.join(choices)})" if 1 < len(choices) <= 6 else f"`{f.name}`")
        rows.append(f"| {', '.join(keys)} | {title} |")
    return "\n".join(rows) + "\n"


def key_reference() -> str:
    """docs/keys.md's body: every key of every section with its default, range (number keys must be finite too)
    and help."""
    parts = []
    for title, owner, section_fields in _sections():
        ranges = ranges_of(owner)
        parts += [f"### {title}\n", "| key | default | range | meaning |", "|---|---|---|---|"]
        for f in section_fields:
            span = _cell(ranges[f.name].describe()) if f.name in ranges else "-"
            parts.append(f"| `{f.name}` | {_cell(_default(f))} | {span} | "
                         f"{_cell(' '.join(str(f.metadata.get('help', '')).split()))} |")
        parts.append("")
    return "\n".join(parts)


BLOCKS = {
    "README.md": {"objectives": objective_table, "keys": key_table},
    "docs/keys.md": {"keys": key_reference},
}


def render(text: str, blocks: dict[str, Any], command: str = "make docs") -> str:
    """`text` with each generated block replaced by its current content; a missing marker is an error. `command`
    is what the marker says regenerates the block (tools/study_report.py's blocks: `make study`)."""
    for name, make in blocks.items():
        marker = f"<!-- generated: {name} ({command}) -->"
        pattern = re.compile(rf"({re.escape(marker)}\n).*?(<!-- end: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"no block '{name}': add {marker} ... <!-- end: {name} -->")
        text = pattern.sub(lambda match: match.group(1) + make() + match.group(2), text)
    return text


def stale_pages(root: Path = ROOT) -> list[str]:
    """The pages whose generated blocks differ from the code."""
    return [page for page, blocks in BLOCKS.items()
            if (text := (root / page).read_text(encoding="utf-8")) != render(text, blocks)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report pages that differ from the code")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{page} differs from the code: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    for page, blocks in BLOCKS.items():
        path = ROOT / page
        path.write_text(render(path.read_text(encoding="utf-8"), blocks), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
