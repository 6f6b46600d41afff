"""A tokenised-data cache that was damaged, left half written, or is shared by processes building the same entry.

Each damaged entry is moved aside (`<key>.bad-<uuid4>`) with exactly one warning naming it and the reason, built
again, and the rebuilt data equal a fresh build; the next run hits the cache with no warning. Temporary folders
are `<key>.tmp-<uuid4>`, published by one rename; the first entry published wins."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import processes
import pytest

from dftune.config.data_args import DataArguments
from dftune.data import cache
from dftune.data.lengths import PreferenceLimits
from dftune.data.manifest import MANIFEST, write_manifest
from dftune.data.preference import prepare_preference_datasets
from dftune.data.prepare import PreparedData, prepare_datasets
from dftune.data.report import ValidationReport
from dftune.models.presets import build_tokenizer

from .conftest import chat, dftune, hashes, train_argv, truncate, write_jsonl

ENTRY = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """A train file, and an eval file whose every record is invalid: its split is empty (stored as its columns)."""
    return {"train": write_jsonl(tmp_path / "train.jsonl", [chat(f"{i} + {i}?", str(2 * i)) for i in range(40)]),
            "eval": write_jsonl(tmp_path / "eval.jsonl", [{"nope": 1}])}  # fmt: skip


def prepare(data: dict[str, Path], cache_dir: Path, tokenizer) -> PreparedData:
    args = DataArguments(data_files=[str(data["train"])], eval_files=[str(data["eval"])], max_length=64,
                         on_bad_record="skip", dataset_cache_dir=str(cache_dir))  # fmt: skip
    return prepare_datasets(args, tokenizer, seed=0)


def folders(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "prepared").iterdir())


def the_entry(cache_dir: Path) -> Path:
    (name,) = [name for name in folders(cache_dir) if ENTRY.fullmatch(name)]
    return cache_dir / "prepared" / name


def columns(prepared: PreparedData) -> tuple[dict, dict]:
    return prepared.train.to_dict(), prepared.eval.to_dict()


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == cache.__name__ and r.levelno >= logging.WARNING]


def _arrow(entry: Path) -> Path:
    (arrow,) = (entry / "train").glob("*.arrow")
    return arrow


def _flip_a_byte(entry: Path) -> None:
    arrow = _arrow(entry)
    raw = bytearray(arrow.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    arrow.write_bytes(bytes(raw))


def _unreadable_arrow(entry: Path) -> None:
    """Garbage of the right size, and a manifest rewritten to match it: only reading the table finds it."""
    arrow = _arrow(entry)
    arrow.write_bytes(b"\0" * arrow.stat().st_size)
    write_manifest(entry)


# (case, how the entry is damaged, the reason the warning gives)
DAMAGE = [
    ("truncated arrow file", lambda e: truncate(_arrow(e)), "bytes, its manifest says"),
    ("missing manifest", lambda e: (e / MANIFEST).unlink(), f"no {MANIFEST} (a partial entry"),
    ("wrong checksum", _flip_a_byte, "does not match its SHA-256 in the manifest"),
    ("deleted file", lambda e: (e / "train" / "state.json").unlink(), "train/state.json is missing"),
    ("deleted empty split", lambda e: (e / "eval" / "empty.json").unlink(), "eval/empty.json is missing"),
    ("manifest not JSON", lambda e: (e / MANIFEST).write_text("{oops"), f"{MANIFEST} cannot be read"),
    ("unreadable arrow", _unreadable_arrow, "it cannot be read ("),
]  # fmt: skip


@pytest.mark.parametrize("case, damage, reason", DAMAGE, ids=[c[0] for c in DAMAGE])
def test_a_damaged_entry_is_moved_aside_and_rebuilt(case, damage, reason, data, tmp_path, tokenizer, caplog):
    cache_dir = tmp_path / "cache"
    assert not prepare(data, cache_dir, tokenizer).cache_hit
    entry = the_entry(cache_dir)
    damage(entry)
    with caplog.at_level(logging.INFO):
        rebuilt = prepare(data, cache_dir, tokenizer)
    assert not rebuilt.cache_hit
    (warning,) = cache_warnings(caplog)  # exactly one, on one line, naming the entry and the reason
    assert "\n" not in warning and f"cache entry {entry} is damaged: " in warning and reason in warning, warning
    (aside,) = [name for name in folders(cache_dir) if name.startswith(f"{entry.name}.bad-")]
    assert re.fullmatch(rf"{entry.name}\.bad-[0-9a-f]{{32}}", aside) and aside in warning
    assert columns(rebuilt) == columns(prepare(data, tmp_path / "fresh", tokenizer))  # equal to a fresh build
    caplog.clear()
    again = prepare(data, cache_dir, tokenizer)
    assert again.cache_hit and not cache_warnings(caplog) and columns(again) == columns(rebuilt)
    assert len(again.eval) == 0 and set(again.eval.column_names) == set(rebuilt.train.column_names)


def test_train_recovers_from_a_truncated_entry_without_a_traceback(tiny_model_dir, data, tmp_path, capsys, caplog):
    cache_dir = tmp_path / "cache"
    argv = lambda out: train_argv(tiny_model_dir, data["train"], tmp_path / out, "--dataset_cache_dir", cache_dir,
                                  "--save_strategy", "no", steps=1)  # fmt: skip
    assert dftune(capsys, *argv("first")).code == 0
    truncate(_arrow(the_entry(cache_dir)))
    with caplog.at_level(logging.INFO):
        outcome = dftune(capsys, *argv("second"))  # `dftune` fails the test on a traceback
    assert outcome.code == 0 and (tmp_path / "second" / "model.safetensors").is_file()
    assert len(cache_warnings(caplog)) == 1 and outcome.text.count(" is damaged: ") == 1, outcome.text[-3000:]


def test_a_damaged_preference_entry_is_rebuilt(tmp_path, tokenizer, caplog):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"{i}?", "chosen": str(i), "rejected": "no"}
                                                  for i in range(8)])  # fmt: skip
    build = lambda cache_dir: prepare_preference_datasets(
        DataArguments(data_files=[str(data)], dataset_cache_dir=str(cache_dir)), tokenizer,
        limits=PreferenceLimits(64), seed=0)  # fmt: skip
    first = build(tmp_path / "cache").train.to_dict()
    (entry,) = [p for p in (tmp_path / "cache" / "preference").iterdir() if ENTRY.fullmatch(p.name)]
    truncate(_arrow(entry))
    with caplog.at_level(logging.INFO):
        rebuilt = build(tmp_path / "cache")
    assert not rebuilt.cache_hit and rebuilt.train.to_dict() == first and len(cache_warnings(caplog)) == 1
    assert build(tmp_path / "cache").cache_hit


def test_a_stale_temporary_folder_is_removed_and_a_live_one_kept(data, tmp_path, tokenizer, caplog):
    """A writer killed mid-save (here and in dftune before, `<key>.tmp<pid>`) left a folder; a live writer's is new."""
    cache_dir = tmp_path / "cache"
    fresh = columns(prepare(data, cache_dir, tokenizer))
    entry = the_entry(cache_dir)
    shutil.rmtree(entry)
    stale = [entry.with_name(f"{entry.name}.tmp-{'0' * 32}"), entry.with_name(f"{entry.name}.tmp4242")]
    live = entry.with_name(f"{'f' * 32}.tmp-{'1' * 32}")
    for folder in (*stale, live):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "data-00000-of-00001.arrow").write_bytes(b"half")
    old = time.time() - cache.STALE_SECONDS - 60
    for folder in stale:
        os.utime(folder, (old, old))
    with caplog.at_level(logging.INFO):
        rebuilt = prepare(data, cache_dir, tokenizer)
    assert not rebuilt.cache_hit and columns(rebuilt) == fresh and not cache_warnings(caplog)
    assert folders(cache_dir) == sorted([entry.name, live.name])
    assert prepare(data, cache_dir, tokenizer).cache_hit


def test_a_lost_race_keeps_the_first_entry(data, tmp_path, tokenizer, caplog):
    """Another process published the entry while this one built it: its entry stays as it was, ours is deleted."""
    cache_dir = tmp_path / "cache"
    first = prepare(data, cache_dir, tokenizer)
    entry = the_entry(cache_dir)
    before = hashes(entry)
    other = {"train": first.train.select(range(3)), "eval": first.eval}  # different data: which one survived shows
    with caplog.at_level(logging.INFO):
        cache.save_entry(entry, other, ValidationReport())
    assert hashes(entry) == before and folders(cache_dir) == [entry.name]  # no temporary folder left
    assert f"cache entry {entry} was published by another process first; keeping it" in caplog.text
    assert columns(prepare(data, cache_dir, tokenizer)) == columns(first)


CHILD = """
import json, sys
from dftune.config.data_args import DataArguments
from dftune.data.prepare import prepare_datasets
from dftune.models.presets import build_tokenizer
train, evaluation, cache_dir = sys.argv[1:4]
tokenizer = build_tokenizer()
print("ready", flush=True)
sys.stdin.readline()  # every child starts building at once
args = DataArguments(data_files=[train], eval_files=[evaluation], max_length=64, on_bad_record="skip",
                     dataset_cache_dir=cache_dir)
prepared = prepare_datasets(args, tokenizer, seed=0)
print(json.dumps([prepared.train.to_dict(), prepared.eval.to_dict()]))
"""


def test_two_processes_building_one_entry_at_once(data, tmp_path, tokenizer):
    """Two real processes build the same entry from a common start: both succeed with the same data, one entry is
    published, and neither temporary folder is left (whichever interleaving the machine gives)."""
    cache_dir = tmp_path / "cache"
    argv = [sys.executable, "-c", CHILD, str(data["train"]), str(data["eval"]), str(cache_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for _ in range(2)]  # fmt: skip
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()[-3000:]
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [processes.communicate(child, step="build the cache entry", timeout=120) for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0 and "Traceback" not in err, err[-3000:]
    fresh = list(columns(prepare(data, tmp_path / "fresh", tokenizer)))
    assert [json.loads(out.splitlines()[-1]) for out, _err in results] == [fresh, fresh]
    entry = the_entry(cache_dir)
    assert folders(cache_dir) == [entry.name]
    hit = prepare(data, cache_dir, tokenizer)
    assert hit.cache_hit and list(columns(hit)) == fresh
