"""Data sources: what one named part of the data is (files or a Hub dataset), how its records are read and turned
into a layout `dftune.data.formats` reads, and the name its per-source metrics (`ce/<name>`) carry.

A source is one `data_files` item as resolved (one file, or one Hub name), or one LLaMA-Factory `dataset` entry
(its file or folder, `dftune.data.llamafactory`). Records keep their own `file:line` / `file[index]`: the source
only groups them, applies `max_samples` (the first N records of the source, as LLaMA-Factory caps each dataset)
and names them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dftune.data.readers import RawRecord, is_local, read_records, resolve_sources


@dataclass(frozen=True)
class Source:
    """One named source. `convert` maps a raw record to a layout formats reads (raising InvalidRecord); `settings`
    is what of the source changes its records beyond the files' bytes (for the cache fingerprint)."""

    name: str
    paths: tuple[str, ...]
    convert: Callable[[Any], Any] | None = field(default=None, compare=False)
    max_samples: int | None = None
    settings: str = ""
    read: Callable[[str], Iterator[RawRecord]] = field(default=read_records, compare=False)
    content_hash: Callable[[str], str] | None = field(default=None, compare=False)

    def records(self) -> Iterator[tuple[str, RawRecord]]:
        """(path, record) for the source's records in order, the first `max_samples` only when set."""
        count = 0
        for path in self.paths:
            for record in self.read(path):
                if self.max_samples is not None and count >= self.max_samples:
                    return
                count += 1
                if record.reason is None and self.convert is not None:
                    record = RawRecord(record.location, _Converted(self.convert, record.value))
                yield path, record

    def digest(self, file_hash: Callable[[str], str]) -> str:
        """What names this source's records in the cache: its name, settings, cap and each path's content."""
        parts = [self.name, self.settings, str(self.max_samples)]
        for path in self.paths:
            parts += [path, (self.content_hash or file_hash)(path)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class _Converted:
    """A raw value with the conversion still to apply: conversion errors are record errors (InvalidRecord), which
    `normalise` reports with the record's location, so they are raised where normalisation runs."""

    convert: Callable[[Any], Any]
    value: Any


def normalise(normalize: Callable[[Any], Any], value: Any) -> Any:
    """`normalize(value)`, converting a LLaMA-Factory record to our layouts first."""
    if isinstance(value, _Converted):
        value = value.convert(value.value)
    return normalize(value)


def as_sources(items: Sequence[str | Source]) -> list[Source]:
    """Sources from resolved data files or Hub names (one source each, named by file stem) or Sources as given."""
    sources = [item if isinstance(item, Source) else Source(source_name(item), (item,)) for item in items]
    return unique_names(sources)


def file_sources(specs: Sequence[str], max_samples: int | None = None) -> list[Source]:
    """`data_files` / `eval_files`: one source per resolved file or Hub name."""
    return [Source(source_name(path), (path,), max_samples=max_samples) for path in resolve_sources(specs)]


def source_name(path: str) -> str:
    """A file's stem (`data/alpaca.jsonl` -> `alpaca`), a Hub dataset's name (`owner/name` -> `name`)."""
    return Path(path).stem if is_local(path) else path.rsplit("/", 1)[-1]


def unique_names(sources: Sequence[Source]) -> list[Source]:
    """Sources whose names are unique: a repeated name gets `-2`, `-3`, ... in order (same source: same name)."""
    seen: dict[str, tuple] = {}  # name -> what the source reads
    out = []
    for source in sources:
        what = (source.paths, source.settings, source.max_samples)
        name, n = source.name, 1
        while name in seen and seen[name] != what:
            n += 1
            name = f"{source.name}-{n}"
        seen.setdefault(name, what)
        out.append(source if name == source.name else _renamed(source, name))
    return out


def _renamed(source: Source, name: str) -> Source:
    return Source(name, source.paths, source.convert, source.max_samples, source.settings, source.read,
                  source.content_hash)  # fmt: skip


def name_table(splits: dict[str, list[Source]]) -> list[str]:
    """Every source name of the run, train first, once each: the index of a name is its `source_id`."""
    names: list[str] = []
    for sources in splits.values():
        names.extend(s.name for s in sources if s.name not in names)
    return names
