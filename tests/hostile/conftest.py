"""The hostile-input suite: each case builds one bad input or fault, runs the `dftune` CLI in-process and checks
the outcome is a clean error (exit code, a message naming the file, line or key and a fix, no traceback) or a
recovery (the command succeeds and the result is right). Never a traceback, never a silent wrong result."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dftune.cli.main import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def dftune(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    """`dftune ARGV` in-process; argparse's own exits come back as their code. A traceback fails the test."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse rejects a flag's value: usage and message on stderr, exit 2
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    outcome = Outcome(code, captured.out, captured.err)
    assert "Traceback" not in outcome.text, outcome.text[-3000:]
    return outcome


def clean_error(outcome: Outcome, code: int, *fragments: str) -> None:
    """Exit `code`, one `dftune: error:` (or argparse) message holding every fragment."""
    assert outcome.code == code, outcome.text[-3000:]
    assert "error:" in outcome.err, outcome.err[-3000:]
    for fragment in fragments:
        assert fragment in outcome.err, f"{fragment!r} not in: {outcome.err[-3000:]}"


def chat(question: str = "2 + 2?", answer: str = "4", user: str = "user", assistant: str = "assistant") -> dict:
    return {"messages": [{"role": user, "content": question}, {"role": assistant, "content": answer}]}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", [chat(f"{i} + {i}?", str(2 * i)) for i in range(16)])


def train_argv(model: Path, data: Path | str, out: Path, *extra: str, steps: int = 2) -> list[str]:
    """A tiny CPU run; `extra` flags override."""
    return ["train", "--model_name_or_path", str(model), "--data_files", str(data), "--output_dir", str(out),
            "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
            "--logging_steps", "1", "--report_to", "none", "--use_cpu", "true", "--save_steps", "100", *extra]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[callable]:
    """`small_disk(size)` mounts a tmpfs of `size` (e.g. "2m") and returns its folder; remount with a new size by
    calling it again. Needs root (skips otherwise); unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = []

    def resize(size: str) -> Path:
        options = f"remount,size={size}" if mounted else f"size={size}"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode()[:200]}")
        mounted.append(size)
        return mount

    yield resize
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: a failed writer may still hold a file


def copy_model(model: Path, to: Path) -> Path:
    shutil.copytree(model, to)
    return to


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def hashes(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under `roots` (or of each root that is a file), by path: equal before and after a
    refused command means nothing of the user's was lost."""
    import hashlib

    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
