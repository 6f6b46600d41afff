"""Where commands write, checked once for all of them: never over one of the command's inputs (a data file, a model,
an adapter, a base model) nor a folder holding one, never into `/`, the home folder or the working directory itself,
never through a symbolic link; files are written to a temporary name beside the target and renamed over it, so a
reader sees the old file or the new one, never half of one.

Every writing command calls `output_file` or `output_folder` before any work, and writes through `replaced`.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dftune.errors import DftuneError

MODEL_FILES = ("config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors",
               "trainer_state.json")  # files that show a folder already holds a model or a run


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))  # never raises, unlike Path.resolve on a link loop


def input_paths(entries: Iterable[str | Path | None]) -> list[Path]:
    """The existing paths behind `entries` (files, folders, globs; None and Hub names skipped), resolved."""
    found: list[Path] = []
    for entry in entries:
        if entry is None or str(entry) == "":
            continue
        text = os.path.expanduser(str(entry))
        matches = glob.glob(text, recursive=True) if glob.has_magic(text) else [text]
        found += [_resolved(m) for m in matches if os.path.lexists(m)]
    return found


def _refuse_protected(target: Path, flag: str, shown: str, inputs: Iterable[str | Path | None]) -> None:
    """`target` (resolved) must not be `/`, home, the working directory, an input or a folder holding one."""
    protected = {Path("/"): "the filesystem root", Path.home().resolve(): "your home folder",
                 Path.cwd().resolve(): "the working directory itself"}
    if target in protected:
        raise DftuneError(f"{flag} {shown} is {protected[target]}; dftune writes only into a folder of its own: "
                          f"give a new or empty folder, e.g. {Path(shown) / 'outputs'}")
    for source in input_paths(inputs):
        if source == target:
            raise DftuneError(f"{flag} {shown} is one of this command's inputs ({source}): writing there would "
                              "replace it; choose another path")
        if target in source.parents:
            raise DftuneError(f"{flag} {shown} holds this command's input {source}: writing there would put files "
                              "beside it (and mix them with it); choose a folder of its own")


def output_file(path: str | Path, flag: str, example: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """`path` as a file to write: not an input nor a folder holding one, not an existing folder, its parent not a
    file; a DftuneError naming `flag` otherwise (`example`: a file name to suggest inside a folder)."""
    target = Path(path).expanduser()
    _refuse_protected(_resolved(target), flag, str(path), inputs)
    if target.is_dir():
        raise DftuneError(f"{flag} {path} is a folder; give a file path, e.g. {target / example}")
    blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DftuneError(f"{flag} {path}: {blocker} is a file, not a folder; choose another path")
    return target


def output_folder(path: str | Path, flag: str, inputs: Iterable[str | Path | None] = (), *,
                  fresh: bool = False) -> Path:
    """`path` as a folder to write into: not a file, an input, a folder holding one, `/`, home or the working
    directory, and without symbolic links in it. `fresh`: it must not hold a model or a run already."""
    target = Path(path).expanduser()
    _refuse_protected(_resolved(target), flag, str(path), inputs)
    if target.exists() and not target.is_dir():
        raise DftuneError(f"{flag} {path} is a file; give a folder")
    refuse_links(target, flag)
    held = [name for name in MODEL_FILES if (target / name).exists()] if fresh else []
    if held:
        raise DftuneError(f"{flag} {path} already holds a model ({', '.join(held)}); writing there would replace "
                          "it: choose a new or empty folder, or delete that one first")
    return target


def refuse_links(folder: Path, flag: str) -> None:
    """A symbolic link anywhere in `folder` is an error: a write to it would land outside the folder."""
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            entry = Path(root) / name
            if entry.is_symlink():
                raise DftuneError(f"{flag} {folder} holds a symbolic link, {entry} -> {os.readlink(entry)}; dftune "
                                  "never writes through one (it would write outside the folder): remove the link "
                                  "or choose another folder")


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path` with a random part (no two writers share it) and `path`'s suffix (so writers
    that choose a format by the suffix, as PIL does, still do)."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")


@contextmanager
def replaced(path: str | Path) -> Iterator[Path]:
    """Write `path` whole or not at all: yields a temporary path beside it to write; on success it is renamed over
    `path` (replacing a symbolic link there, never writing through it), on failure deleted."""
    target = Path(path)
    tmp = temporary_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """`path` holds `text` (UTF-8), written whole by `replaced`; its parent folders are made."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
