"""Find data files and read their records, each tagged with where it came from (file:line or file[index]).

Reading never raises for a bad record: undecodable lines come back as `RawRecord`s carrying a reason, so the
caller can count and report them. Only a missing or unreadable *source* is a `DftuneError`.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dftune.errors import DftuneError

SUFFIXES = (".jsonl", ".json", ".parquet")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Location:
    """Where a record sits: `line` (1-based) for JSON lines, `index` (0-based) for arrays, parquet and Hub rows."""

    file: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else f"{self.file}[{self.index}]"


@dataclass(frozen=True)
class RawRecord:
    """A decoded record (`value`), or the `reason` it could not be decoded."""

    location: Location
    value: Any = None
    reason: str | None = None
    detail: str = ""


def resolve_sources(specs: Sequence[str]) -> list[str]:
    """Expand files, globs and directories into data files (sorted); keep Hub dataset names as they are."""
    sources: list[str] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise DftuneError(f"directory {spec} holds no {'/'.join(SUFFIXES)} files")
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise DftuneError(f"{spec}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}")
            found = [str(path)]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).suffix in SUFFIXES)
            if not found:
                raise DftuneError(f"no {'/'.join(SUFFIXES)} files match {spec}")
        elif _looks_like_hub_name(spec):
            found = [spec]
        else:
            raise DftuneError(f"data file not found: {spec}")
        sources.extend(s for s in found if s not in sources)
    return sources


def load_records(paths: Sequence[str]) -> Iterator[RawRecord]:
    """Every record of `paths` (files, globs, directories, Hub names), decoded or with its reason."""
    for source in resolve_sources(paths):
        yield from read_records(source)


def is_local(source: str) -> bool:
    """True for a file on disk, False for a Hub dataset name."""
    return Path(source).expanduser().is_file()


def read_records(source: str) -> Iterator[RawRecord]:
    """Yield every record of one source, in order, with its location."""
    if not is_local(source):
        for index, row in enumerate(load_hub_dataset(source)):
            yield RawRecord(Location(source, index=index), row)
        return
    suffix = Path(source).suffix
    if suffix == ".parquet":
        yield from _read_parquet(source)
    elif suffix == ".json":
        yield from _read_json(source)
    else:
        yield from _read_json_lines(source)


@lru_cache(maxsize=None)
def load_hub_dataset(name: str) -> Any:
    """The `train` split of a Hub dataset; a DftuneError naming `name` when it cannot be had (e.g. offline)."""
    import datasets

    try:
        return datasets.load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-repo errors all mean the same to the user
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DftuneError(
            f"data path not found locally: {name} (nor could it be loaded as a Hub dataset: {first_line})"
        ) from exc


def _looks_like_hub_name(spec: str) -> bool:
    """`name` or `owner/name` with no data-file suffix and no path syntax."""
    parts = spec.split("/")
    return (
        len(parts) <= 2
        and all(parts)
        and not spec.startswith((".", "~"))
        and Path(spec).suffix not in SUFFIXES
    )


def _read_json_lines(source: str, data: bytes | None = None) -> Iterator[RawRecord]:
    """One record per non-blank line; BOM, CRLF and surrounding whitespace are tolerated."""
    if data is None:
        data = Path(source).read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.strip()
        if not raw:
            continue
        location = Location(source, line=number)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(location, reason="non-UTF-8 bytes", detail=f"byte {exc.start}")
            continue
        try:
            yield RawRecord(location, json.loads(text))
        except json.JSONDecodeError as exc:
            yield RawRecord(location, reason="invalid JSON", detail=f"{exc.msg} at column {exc.colno}")


def _read_json(source: str) -> Iterator[RawRecord]:
    """A JSON array (records located by index), one JSON object, or JSON lines saved under a .json name."""
    data = Path(source).read_bytes()
    try:
        text = data.decode("utf-8-sig")
        valid_utf8 = True
    except UnicodeDecodeError:
        # Decode anyway so the good records survive; the bad bytes become lone surrogates we detect per record.
        text = data.decode("utf-8-sig", errors="surrogateescape")
        valid_utf8 = False
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            yield RawRecord(Location(source, line=exc.lineno), reason="invalid JSON", detail=exc.msg)
        else:
            yield from _read_json_lines(source, data)
        return
    if not isinstance(value, list):
        yield RawRecord(Location(source, line=1), value)
        return
    for index, item in enumerate(value):
        location = Location(source, index=index)
        if not valid_utf8 and _has_lone_surrogates(item):
            yield RawRecord(location, reason="non-UTF-8 bytes")
        else:
            yield RawRecord(location, item)


def _read_parquet(source: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(source).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure means the file itself is unreadable
        raise DftuneError(f"cannot read parquet file {source}: {exc}") from exc
    for index, row in enumerate(rows):
        yield RawRecord(Location(source, index=index), row)


def _has_lone_surrogates(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
