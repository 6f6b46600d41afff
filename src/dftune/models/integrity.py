"""Cheap checks that a saved file can be read, without reading it: the failures a truncated copy, a full disk or a
killed save leave behind, named by file instead of surfacing as a `SafetensorError` or an unpickling traceback.

- `*.safetensors`: the 8-byte header length, the JSON header, and the file as long as its last tensor's end.
- `*.pt`, `*.pth` (torch.save's zip): the zip's central directory, which sits at the end of the file.
- `*.json`: parses.
- the pickles a resume unpickles (`optimizer.pt`, `scheduler.pt`, `rng_state.pth`): `pickle_problem` loads them as
  the Trainer will, weights only, memory-mapped (the tensors are not read), so a pickle of anything else is named
  here, not a raw `UnpicklingError` mid-resume.

A local model folder must hold a config and whole safetensors weights, and its JSON files (config, tokenizer) must
parse; a Hub name is left to transformers.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch
from transformers.trainer_pt_utils import safe_globals

from dftune.errors import DftuneError

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (truncated, empty, not safetensors), or None when it looks whole."""
    size = path.stat().st_size
    if size < 8:
        return f"is {size} bytes: empty or truncated"
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(size - 8, _MAX_HEADER):
            return f"is truncated or not safetensors ({size} bytes, its header claims {length})"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "has a damaged header (not JSON): truncated or overwritten"
    if not isinstance(header, dict):
        return "has a damaged header (not a mapping)"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]  # fmt: skip
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"is truncated: {size} bytes, its header needs {expected}"
    return None


def file_problem(path: Path) -> str | None:
    """Why the saved file `path` cannot be read (by its kind), or None when the cheap check passes."""
    try:
        if path.suffix == ".safetensors":
            return safetensors_problem(path)
        if path.suffix in (".pt", ".pth", ".bin") and path.stat().st_size and not zipfile.is_zipfile(path):
            return "is truncated or damaged (not a whole torch.save archive)"
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"is not valid JSON ({err}): truncated or damaged"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    return None


def pickle_problem(path: Path) -> str | None:
    """Why `torch.load(path, weights_only=True)` would refuse the file (a pickled object that is not tensors and
    plain values), or None. With the numpy types the Trainer allows for its RNG states (`safe_globals`), as it
    loads them on resume; memory-mapped, so a large optimizer state costs its pickle only."""
    try:
        with safe_globals():
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        return (f"holds a pickled object that is not weights{what}: torch.load(weights_only=True) refuses it, and "
                "dftune unpickles nothing else, since that can run code")
    except (RuntimeError, ValueError, EOFError, OSError) as err:
        return f"is damaged: torch.load fails ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    return None


def looks_like_path(name: str) -> bool:
    """A Hub name is `org/name` or `name`; anything else that is not on disk is a path that is missing."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def check_local_model(name: str | None, what: str = "model_name_or_path") -> None:
    """A local model folder holds a config and whole safetensors weights; `what` names the key or flag in errors."""
    if not name:
        raise DftuneError(f"{what} is required (a local folder, e.g. from `dftune init-model`)")
    path = Path(name).expanduser()
    if not path.exists():
        if looks_like_path(name):
            raise DftuneError(f"{what} {name}: no such folder")
        return
    if not path.is_dir():
        raise DftuneError(f"{what} {name} is a file; give the model's folder (config.json and weights)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise DftuneError(f"{what} {name} holds no config.json: not a transformers model folder")
    weights = sorted(p for pattern in WEIGHT_FILES for p in path.glob(pattern))
    if not weights:
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise DftuneError(
                f"{what} {name} holds pickled weights ({pickled[0]}) but no .safetensors: dftune reads "
                "safetensors only, since loading a pickle can run code; convert them once with "
                "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)` in a trusted environment"
            )
        raise DftuneError(f"{what} {name} holds no weights (*.safetensors): was the model saved?")
    for saved in [*weights, *sorted(path.glob("*.json"))]:  # weights, then config and tokenizer files
        problem = file_problem(saved)
        if problem:
            raise DftuneError(f"{what}: {saved} {problem}; copy or save the model again (a partial download or "
                              "a save interrupted by a full disk leaves such a file)")
