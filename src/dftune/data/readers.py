"""Find data files and read their records, each tagged with where it came from (file:line or file[index]).

Reading never raises for a bad record: undecodable lines come back as `RawRecord`s carrying a reason, so the
caller can count and report them. Only a missing or unreadable *source* is a `DftuneError`, called what it is (a
FIFO, a device, a dangling link, a link loop, UTF-16 without a byte-order mark), not "not found". UTF-16 and UTF-32
files with a byte-order mark are read; a folder logs what it skipped.
"""

from __future__ import annotations

import codecs
import glob
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dftune.data.surrogates import lone_surrogate, may_hold_surrogates
from dftune.errors import DftuneError

SUFFIXES = (".jsonl", ".json", ".parquet")
_BOM = b"\xef\xbb\xbf"
# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
logger = logging.getLogger(__name__)


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
            found = _folder_files(spec, path)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise DftuneError(f"{spec}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}")
            found = [str(path)]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).suffix in SUFFIXES)
            if not found:
                raise DftuneError(f"no {'/'.join(SUFFIXES)} files match {spec}")
        elif (kind := special_kind(path)) is not None:
            raise DftuneError(f"{spec} is {kind}, not a regular file; give a .jsonl/.json/.parquet file (save piped "
                              "data to a file first: dftune reads the data more than once)")
        elif _looks_like_hub_name(spec):
            found = [spec]
        else:
            raise DftuneError(f"data file not found: {spec}")
        sources.extend(s for s in found if s not in sources)
    return sources


def special_kind(path: Path) -> str | None:
    """What `path` is when it exists but is neither a file nor a folder ("a FIFO (named pipe)", "a dangling
    symbolic link to X", "a symbolic link loop"), else None. Never opens it: opening a FIFO blocks."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        try:
            path.stat()
        except OSError as err:
            if "loop" in str(err).lower() or getattr(err, "errno", None) == 40:
                return "a symbolic link loop"
            return f"a dangling symbolic link (to {os.readlink(path)}, which does not exist)"
        mode = path.stat().st_mode
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), None)


def _folder_files(spec: str, folder: Path) -> list[str]:
    """The data files under `folder` (sorted); what else it holds is logged, by kind, once."""
    found, skipped = [], []
    for entry in sorted(folder.rglob("*")):
        kind = special_kind(entry)
        if kind is not None:
            skipped.append(f"{entry.name} ({kind})")
        elif entry.is_file() and entry.suffix in SUFFIXES:
            found.append(str(entry))
        elif entry.is_file():
            skipped.append(f"{entry.name} (not {'/'.join(SUFFIXES)})")
    if skipped:
        logger.warning("%s: skipped %d entries: %s", spec, len(skipped), ", ".join(skipped[:10])
                       + (f", ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""))
    if not found:
        raise DftuneError(f"directory {spec} holds no {'/'.join(SUFFIXES)} files"
                          + (f" (skipped: {', '.join(skipped[:5])})" if skipped else ""))
    return found


def read_text_bytes(source: str) -> bytes:
    """The bytes of a JSON(L) file as UTF-8: a UTF-8 BOM dropped, UTF-16/32 with a BOM converted; a DftuneError for
    a file that cannot be read or is wide text without a BOM (NUL bytes: every line would be "invalid JSON")."""
    try:
        data = Path(source).read_bytes()
    except OSError as err:
        raise DftuneError(f"cannot read {source}: {err.strerror or err}") from None
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding).encode("utf-8")
            except UnicodeDecodeError as err:
                raise DftuneError(f"{source}: starts with a {encoding.upper()} byte-order mark but is not valid "
                                  f"{encoding.upper()} (byte {err.start}); save it as UTF-8") from None
    if b"\x00" in data[:4096]:
        raise DftuneError(f"{source}: holds NUL bytes, as UTF-16 or UTF-32 text without a byte-order mark does; "
                          "save it as UTF-8 (e.g. `iconv -f UTF-16LE -t UTF-8`)")
    return data[len(_BOM):] if data.startswith(_BOM) else data


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
        data = read_text_bytes(source)
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
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawRecord(location, reason="invalid JSON", detail=f"{exc.msg} at column {exc.colno}")
            continue
        yield _checked(location, value, escaped=may_hold_surrogates(raw))


def _read_json(source: str) -> Iterator[RawRecord]:
    """A JSON array (records located by index), one JSON object, or JSON lines saved under a .json name."""
    data = read_text_bytes(source)
    try:
        text = data.decode("utf-8-sig")
        valid_utf8 = True
    except UnicodeDecodeError:
        # Decode anyway so the good records survive; the bad bytes become lone surrogates we detect per record.
        text = data.decode("utf-8-sig", errors="surrogateescape")
        valid_utf8 = False
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if text.lstrip().startswith("["):
            yield from _read_broken_array(source, text)
        else:
            yield from _read_json_lines(source, data)
        return
    escaped = may_hold_surrogates(data)
    if not isinstance(value, list):
        yield _checked(Location(source, line=1), value, escaped=escaped)
        return
    for index, item in enumerate(value):
        location = Location(source, index=index)
        if not valid_utf8 and lone_surrogate(item) is not None:  # undecodable bytes, as surrogateescape keeps them
            yield RawRecord(location, reason="non-UTF-8 bytes")
        else:
            yield _checked(location, item, escaped=escaped)


def _read_broken_array(source: str, text: str) -> Iterator[RawRecord]:
    """A JSON array that does not parse: its elements before the error, each a record (so they are counted and
    checked), then one record for the error at its line, saying the rest cannot be read."""
    decoder, index = json.JSONDecoder(), 0
    position = _skip_space(text, text.index("[") + 1)
    message = "text after the closing ]" if text.startswith("]", position) else ""
    while not message:
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            message = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            break
        yield _checked(Location(source, index=index), item, escaped=True)
        index += 1
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif text.startswith("]", position):
            message = "text after the closing ]"
        else:
            message = "expected , or ] after an element"
    line = text.count("\n", 0, position) + 1
    yield RawRecord(Location(source, line=line), reason="invalid JSON",
                    detail=f"the array breaks after {index} element{'' if index == 1 else 's'}: {message}; the rest "
                    "is not read")


def _skip_space(text: str, position: int) -> int:
    """The first position at or after `position` that is not whitespace."""
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _read_parquet(source: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(source).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure means the file itself is unreadable
        raise DftuneError(f"cannot read parquet file {source}: {exc}") from exc
    for index, row in enumerate(rows):
        yield RawRecord(Location(source, index=index), row)


def _checked(location: Location, value: Any, *, escaped: bool) -> RawRecord:
    """The record, or a bad one (`invalid Unicode`) when a string in it holds a lone surrogate (`data.surrogates`)."""
    found = lone_surrogate(value) if escaped else None
    return RawRecord(location, value) if found is None else RawRecord(location, reason="invalid Unicode", detail=found)
