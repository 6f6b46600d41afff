"""Where prepared datasets are cached, and the fingerprint that names them.

The fingerprint hashes everything that changes the tokenised result: the data files' bytes (or a Hub
dataset's own fingerprint), the tokenizer (vocabulary, specials, chat template, class, split_special_tokens, the
transformers and tokenizers versions), max_length, mask_history, and CODE_VERSION, which must be bumped whenever
reading, validation or encoding changes behaviour. The split and the bad-record policy are applied after the cache,
so they are not part of it.

An entry `<root>/<kind>/<key>/` holds one folder per split, report.json and manifest.json (every file's size and
SHA-256, written last). It is checked on every load; a damaged one is moved aside and built again, with one warning.
Writers never share a folder: each writes `<key>.tmp-<uuid4>` and renames it to `<key>` (atomic; the first wins).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
import transformers
from datasets import Dataset, Features, load_from_disk
from pyarrow import ArrowException
from transformers import PreTrainedTokenizerBase

from dftune.data.encode import chat_template, require_fast
from dftune.data.manifest import check_manifest, listed_files, sha256_file, write_manifest
from dftune.data.readers import is_local, load_hub_dataset
from dftune.data.report import ValidationReport
from dftune.data.sources import Source, as_sources

# 2: long conversations split, source_id, per-source length counts; 3: lone replies; 4: special strings in content as
# text, targets by token overlap, plain-text ends of turn trained, empty replies counted
CODE_VERSION = "dftune-data-4"
_REPORT = "report.json"
_EMPTY = "empty.json"  # an empty split's features: `datasets` 5.2 saves a table without rows but cannot load it back
_TMP, _BAD = ".tmp-", ".bad-"  # <key>.tmp-<uuid4>: being written; <key>.bad-<uuid4>: a damaged entry moved aside
STALE_SECONDS = 24 * 3600  # a temporary folder this old lost its writer

logger = logging.getLogger(__name__)


def cache_root(configured: str | None) -> Path:
    """`dataset_cache_dir`, else $DFTUNE_CACHE, else ~/.cache/dftune."""
    return Path(configured or os.environ.get("DFTUNE_CACHE") or Path.home() / ".cache" / "dftune").expanduser()


def fingerprint(
    splits: dict[str, Sequence[str | Source]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    mask_history: bool,
    **settings: Any,
) -> str:
    """A hex digest naming the tokenised result of `splits` ({"train": sources, "eval": sources}); `settings` are
    further keys that change it (e.g. long_conversations)."""
    digest = hashlib.sha256()
    settings = {"code": CODE_VERSION, "max_length": max_length, "mask_history": mask_history, **settings}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for split, sources in splits.items():
        digest.update(f"\0split {split}\0".encode())
        for source in as_sources(sources):
            digest.update(f"\0source {source.name}\0".encode())
            digest.update(source.digest(_content_hash).encode())
    digest.update(_tokenizer_hash(tokenizer).encode())
    return digest.hexdigest()[:32]


def load_entry(entry: Path) -> tuple[dict[str, Dataset], ValidationReport] | None:
    """The cached datasets and report, or None when the entry is absent or was damaged (then it is moved aside to
    `<key>.bad-<uuid4>` with one warning naming it and why, and the caller builds it again)."""
    if not entry.exists():
        return None
    reason = check_manifest(entry)
    if reason is None:
        try:
            return _read(entry)
        except (OSError, ValueError, KeyError, TypeError, ArrowException) as exc:  # listed and intact, yet unreadable
            reason = f"it cannot be read ({type(exc).__name__}: {exc})"
    _move_aside(entry, reason)
    return None


def save_entry(entry: Path, datasets: dict[str, Dataset], report: ValidationReport) -> None:
    """Write into `<key>.tmp-<uuid4>`, its manifest last, and publish it by one atomic rename: readers see the whole
    entry or none. A random suffix, not the pid: two containers sharing a cache have separate pid namespaces.
    When another process published the entry first, its entry is kept and ours deleted (same key, same data).
    `datasets` cannot load back a 0-row dataset it saved, so a split with no rows is stored as its columns."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(entry.parent)
    partial = entry.with_name(f"{entry.name}{_TMP}{uuid.uuid4().hex}")
    try:
        for split, dataset in datasets.items():
            if len(dataset) == 0:  # every record rejected: the report says why, the split is only its columns
                (partial / split).mkdir(parents=True)
                (partial / split / _EMPTY).write_text(json.dumps(dataset.features.to_dict()), encoding="utf-8")
            else:
                dataset.save_to_disk(str(partial / split))
        report.save(partial / _REPORT)
        write_manifest(partial)
        partial.rename(entry)  # rename(2) of a folder onto a non-empty one fails: it never replaces an entry
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not entry.is_dir():
            raise
        logger.info("cache entry %s was published by another process first; keeping it", entry)


def _read(entry: Path) -> tuple[dict[str, Dataset], ValidationReport]:
    splits = sorted({name.split("/")[0] for name in listed_files(entry) if "/" in name})
    datasets = {split: _load_split(entry / split) for split in splits}
    report = ValidationReport.from_dict(json.loads((entry / _REPORT).read_text(encoding="utf-8")))
    return datasets, report


def _load_split(folder: Path) -> Dataset:
    empty = folder / _EMPTY
    if empty.is_file():
        features = Features.from_dict(json.loads(empty.read_text(encoding="utf-8")))
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return load_from_disk(str(folder))


def _move_aside(entry: Path, reason: str) -> None:
    """Rename a damaged entry out of the way (kept for a look, never read again); another process may have moved
    it already."""
    aside = entry.with_name(f"{entry.name}{_BAD}{uuid.uuid4().hex}")
    try:
        entry.rename(aside)
        moved = f"moved it to {aside.name}"
    except FileNotFoundError:
        moved = "another process moved it aside"
    one_line = " ".join(reason.split())  # an exception's message may span lines
    logger.warning("cache entry %s is damaged: %s; %s and building it again", entry, one_line, moved)


def _sweep_stale(folder: Path) -> None:
    """Delete temporary folders untouched for STALE_SECONDS: a writer killed mid-save left them (a live one renames
    its folder within minutes: it only writes finished datasets)."""
    now = time.time()
    for partial in folder.glob("*.tmp*"):  # <key>.tmp-<uuid4>, and <key>.tmp<pid> of dftune before 2026-12
        try:
            stale = now - partial.stat().st_mtime > STALE_SECONDS
        except FileNotFoundError:  # its writer just published or removed it
            continue
        if stale:
            shutil.rmtree(partial, ignore_errors=True)
            logger.info("removed %s, a temporary cache folder left by a writer that stopped", partial)


def report_file(entry: Path) -> Path:
    return entry / _REPORT


def _content_hash(source: str) -> str:
    return sha256_file(Path(source)) if is_local(source) else load_hub_dataset(source)._fingerprint


def _tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """What of the tokenizer changes the tokens: its template, specials and backend (vocabulary, merges, added tokens,
    normalizer, pre-tokenizer), and what lives outside the backend's JSON: the class (a subclass may encode its own
    way), `split_special_tokens` (kept to be safe: `special_tokens_in_content` now decides how special-token text in
    content is tokenised, `dftune.data.special_text`), and the library versions."""
    digest = hashlib.sha256(chat_template(tokenizer).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(require_fast(tokenizer).backend_tokenizer.to_str().encode())
    kind = type(tokenizer)
    outside = {"class": f"{kind.__module__}.{kind.__qualname__}", "split_special": tokenizer.split_special_tokens,
               "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}  # fmt: skip
    digest.update(json.dumps(outside, sort_keys=True).encode())
    return digest.hexdigest()
