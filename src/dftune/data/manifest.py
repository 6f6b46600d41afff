"""A folder's manifest: every file it holds with its size and SHA-256, so a damaged copy is found before it is read.

`write_manifest(folder)` is called last, when every other file is written; `check_manifest(folder)` returns None when
each listed file has its size and hash, else the first reason it does not (sizes of all files first: a truncated or
missing file costs no hashing). Files added after the manifest (e.g. the index files `datasets` writes beside the data
it splits) are not listed and not checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
_VERSION = 1


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """List every file under `folder` (relative POSIX paths) with its size and SHA-256 in `folder/manifest.json`."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    target = folder / MANIFEST
    target.write_text(json.dumps({"version": _VERSION, "files": files}, indent=1) + "\n", encoding="utf-8")
    return target


def listed_files(folder: Path) -> dict[str, dict[str, int | str]]:
    """The manifest's {relative path: {"size", "sha256"}}; ValueError (or OSError) when it cannot be read."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("version") != _VERSION:
        raise ValueError(f"not a version {_VERSION} manifest")
    return files


def check_manifest(folder: Path) -> str | None:
    """None when every file the manifest lists has its size and SHA-256; else why not, naming the file."""
    if not (folder / MANIFEST).is_file():
        return f"no {MANIFEST} (a partial entry, or one written before entries had one)"
    try:
        files = listed_files(folder)
        sizes = {name: (folder / name, int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} cannot be read ({type(exc).__name__}: {exc})"
    try:
        for name, (path, size, _digest) in sizes.items():
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} is {path.stat().st_size} bytes, its manifest says {size}"
        for name, (path, _size, digest) in sizes.items():
            if sha256_file(path) != digest:
                return f"{name} does not match its SHA-256 in the manifest"
    except OSError as exc:  # unreadable (permissions, I/O error) or removed while checked
        return f"{name} cannot be read ({type(exc).__name__}: {exc})"
    return None
