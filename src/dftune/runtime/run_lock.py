"""One run per output_dir: an exclusive `flock` on `output_dir/.dftune.lock`, taken before the output_dir is checked
and held until the run ends, so a second run (or a resume) cannot pass the "holds another run" check while the
first one has not written anything yet. The file says who holds it (pid, host, start time) for the error message.

The kernel drops a flock when its process dies, however it dies: a lock file still naming a holder that we could
lock anyway is a stale one, taken over with one log line. On file systems without flock (some network mounts) the
run goes on with a warning.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dftune.errors import DftuneError

logger = logging.getLogger(__name__)
LOCK_FILE = ".dftune.lock"


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (the lock file does not say which)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {started})"


def lock_holder(output_dir: Path) -> str | None:
    """Who holds output_dir's lock now ("pid N on host H (started ...)"), or None when no live run does."""
    try:
        handle = (output_dir / LOCK_FILE).open("r", encoding="utf-8")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_holder(handle.read()))
        except OSError:  # no flock on this file system: nothing can be said
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@contextmanager
def run_lock(output_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold output_dir's lock for the body; DftuneError naming the holder when another live process has it.
    `enabled` False (processes other than the first of a distributed run) holds nothing."""
    if not enabled:
        yield
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise DftuneError(f"cannot write to output_dir {output_dir}: {err.strerror or err}") from None
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DftuneError(
                f"output_dir {output_dir} is in use by another run: {_describe(_holder(handle.read()))} holds "
                f"{output_dir / LOCK_FILE}. Wait for it to finish, or choose another output_dir"
            ) from None
        except OSError as err:  # no flock on this file system: run unlocked rather than not at all
            logger.warning("cannot lock output_dir %s (%s); make sure no other run uses it", output_dir, err)
        stale = _holder(handle.read())
        if stale:
            logger.info("output_dir %s: taking over the lock of %s, which is no longer running", output_dir,
                        _describe(stale))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # released cleanly: an empty file is no stale holder
            handle.flush()
