"""A full disk while saving: one message (which path, how much was free and needed, what is kept), no traceback.

torch.save reports a full disk as a `RuntimeError` ("file write failed"), safetensors as a `SafetensorError`
("StorageFull"), plain Python as `OSError(ENOSPC)`: all three are recognised here, by errno, by message, and as a
last resort by the free space left where the write went.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dftune.errors import DftuneError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FULL_WORDS = ("no space left", "storagefull", "disk quota", "file write failed", "file too large",
               "iostream error", "unexpected pos")  # the last two: torch's zip writer, cut short
_NEARLY_FULL = 1 << 20  # bytes: a write that failed with less free than this ran out of space
RESUME = ("Free space (or lower save_total_limit, or choose an output_dir on a larger disk), then rerun the same "
          "command with --resume_from_checkpoint auto")


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def is_disk_full(err: BaseException, path: Path) -> bool:
    """True when `err`, raised while writing under `path`, means the disk (or a quota) is full."""
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        return True
    text = str(err).lower()
    if any(word in text for word in _FULL_WORDS):
        return True
    free = free_bytes(path)
    return isinstance(err, (OSError, RuntimeError)) and free is not None and free < _NEARLY_FULL


def megabytes(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1e6:.1f} MB"


@contextmanager
def disk_full_guard(path: Path, *, what: str, kept: str, needed: int | None = None, remove: Path | None = None,
                    fix: str = RESUME) -> Iterator[None]:
    """Turn a full disk while writing `what` under `path` into a DftuneError; `remove` (a half-written folder that
    would never be loaded) is deleted first, to give the space back. `kept` says what the user still has, `fix`
    what to do."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - torch's RuntimeError and SafetensorError have no narrower base
        if isinstance(err, DftuneError) or not is_disk_full(err, path):
            raise
        if remove is not None:
            shutil.rmtree(remove, ignore_errors=True)
        need = f"; it needs about {megabytes(needed)}" if needed else ""
        raise DftuneError(
            f"disk full while writing {what} to {path} ({megabytes(free_bytes(path))} free{need}). {kept} {fix}"
        ) from None


def folder_bytes(folder: Path | None) -> int | None:
    """Bytes of every file under `folder` (e.g. the previous checkpoint: what the next one needs)."""
    if folder is None or not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
