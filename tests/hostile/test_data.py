"""Data inputs a user gets wrong: empty files, wrong encodings, special files, broken arrays, odd role names.
`data check` and `train` agree: what stops a run is exit 1 in `data check`; every record is counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import chat, clean_error, dftune, train_argv, write_jsonl


def _text(tmp_path: Path, content: bytes, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# (case, how to build the input, fragments of the `data check` error); each exits 1 like `train` stops
NO_RECORDS = [
    ("0-byte file", lambda t: _text(t, b""), ["no records in", "empty or blank"]),
    ("blank lines only", lambda t: _text(t, b"\n  \n\r\n\t\n"), ["no records in"]),
    ("UTF-8 BOM only", lambda t: _text(t, b"\xef\xbb\xbf\n"), ["no records in"]),
    ("empty JSON array", lambda t: _text(t, b"[]", "data.json"), ["no records in"]),
]  # fmt: skip


@pytest.mark.parametrize("case, build, fragments", NO_RECORDS, ids=[c[0] for c in NO_RECORDS])
def test_no_records_is_exit_1_in_data_check_and_an_error_in_train(case, build, fragments, tiny_model_dir,
                                                                  tmp_path, capsys):
    path = build(tmp_path)
    clean_error(dftune(capsys, "data", "check", path), 1, str(path), *fragments)
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, path, tmp_path / "out")), 2, "no valid training records")


# (case, records, the reason each bad one is counted under); the check exits 1 and names file:line of each
INVALID = [
    ("all invalid JSON", ["{oops", "nope", "[1, 2"], ["invalid JSON"] * 3),
    ("no assistant turn", [{"messages": [{"role": "user", "content": "q"}]}], ["no assistant turn"]),
    ("unknown role", [chat(user="customer")], ["unknown role"]),
    ("not an object", ["[1, 2]", "3"], ["not an object", "not an object"]),
]  # fmt: skip


@pytest.mark.parametrize("case, records, reasons", INVALID, ids=[c[0] for c in INVALID])
def test_records_with_no_valid_one_are_each_named(case, records, reasons, tiny_model_dir, tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    outcome = dftune(capsys, "data", "check", path)
    assert outcome.code == 1
    for line, reason in enumerate(reasons, start=1):
        assert f"{path}:{line}: {reason}" in outcome.out
    assert f"| {path} | {len(reasons)} | 0 | {len(reasons)} |" in outcome.out  # every record counted
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, path, tmp_path / "out")), 2,
                f"{len(reasons)} of {len(reasons)} records are invalid", f"{path}:1")


def _broken_array(tmp_path: Path) -> Path:
    return _text(tmp_path, b'[\n' + json.dumps(chat()).encode() + b',\n' + json.dumps(chat()).encode()
                 + b',\n{"messages": oops}\n]', "data.json")


def test_broken_json_array_counts_its_readable_elements(tmp_path, capsys):
    path = _broken_array(tmp_path)
    outcome = dftune(capsys, "data", "check", path, "--report", tmp_path / "report.json")
    assert outcome.code == 1 and f"| {path} | 3 | 2 | 1 |" in outcome.out
    assert f"{path}:4: invalid JSON (the array breaks after 2 elements" in outcome.out
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["total"], report["kept"], report["rejected"]) == (3, 2, 1)


def _utf16(tmp_path: Path, encoding: str) -> Path:
    text = "".join(json.dumps(chat(f"é {i}?", "ü"), ensure_ascii=False) + "\n" for i in range(3))
    return _text(tmp_path, text.encode(encoding))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-32", "utf-8-sig"])
def test_bom_marked_encodings_are_read(encoding, tmp_path, capsys):
    if encoding == "utf-16-be-bom":
        text = "".join(json.dumps(chat(f"é {i}?", "ü"), ensure_ascii=False) + "\n" for i in range(3))
        path = _text(tmp_path, b"\xfe\xff" + text.encode("utf-16-be"))
    else:
        path = _utf16(tmp_path, encoding)
    outcome = dftune(capsys, "data", "check", path)
    assert outcome.code == 0 and f"| {path} | 3 | 3 | 0 | - |" in outcome.out, outcome.text


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_is_named(encoding, tmp_path, capsys):
    path = _utf16(tmp_path, encoding)
    clean_error(dftune(capsys, "data", "check", path), 2, str(path), "NUL bytes", "UTF-16", "save it as UTF-8")


def test_a_broken_utf16_file_is_named(tmp_path, capsys):
    path = _text(tmp_path, b"\xff\xfe" + '{"a": 1}'.encode("utf-16-le") + b"\x00\xd8")  # a lone surrogate
    clean_error(dftune(capsys, "data", "check", path), 2, str(path), "UTF-16 byte-order mark but is not valid")


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "pipe.jsonl")
    return tmp_path / "pipe.jsonl"


def _dangling(tmp_path: Path) -> Path:
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "gone.jsonl")
    return tmp_path / "link.jsonl"


def _loop(tmp_path: Path) -> Path:
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    return tmp_path / "a.jsonl"


SPECIAL = [
    ("FIFO", _fifo, ["is a FIFO (named pipe)", "save piped data to a file first"]),
    ("dangling link", _dangling, ["is a dangling symbolic link", "gone.jsonl, which does not exist"]),
    ("link loop", _loop, ["is a symbolic link loop"]),
    ("device", lambda t: Path("/dev/null"), ["/dev/null is a character device"]),
]  # fmt: skip


@pytest.mark.parametrize("case, build, fragments", SPECIAL, ids=[c[0] for c in SPECIAL])
def test_special_files_are_called_what_they_are(case, build, fragments, tiny_model_dir, tmp_path, capsys):
    path = build(tmp_path)
    clean_error(dftune(capsys, "data", "check", path), 2, *fragments)
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, path, tmp_path / "out")), 2, *fragments)


def test_a_folder_lists_what_it_skipped(tmp_path, capsys, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "good.jsonl", [chat(), chat()])
    _fifo(folder), _dangling(folder)
    (folder / "notes.txt").write_text("not data")
    outcome = dftune(capsys, "data", "check", folder)
    assert outcome.code == 0 and "| **all** | 2 | 2 | 0 |" in outcome.out
    logged = caplog.text + outcome.err
    assert "skipped 3 entries" in logged and "pipe.jsonl (a FIFO (named pipe))" in logged
    assert "link.jsonl (a dangling symbolic link" in logged and "notes.txt (not .jsonl/.json/.parquet)" in logged


def test_a_folder_of_special_files_only_says_what_it_skipped(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    _fifo(folder)
    clean_error(dftune(capsys, "data", "check", folder), 2, "holds no .jsonl/.json/.parquet files",
                "skipped: pipe.jsonl (a FIFO")


@pytest.mark.parametrize("user, assistant", [("User", "Assistant"), ("USER", "ASSISTANT"), (" user ", "Assistant "),
                                             ("Human", "GPT")])
def test_role_names_in_other_cases_are_read(user, assistant, tmp_path, capsys):
    path = write_jsonl(tmp_path / "roles.jsonl", [chat(user=user, assistant=assistant)] * 2)
    outcome = dftune(capsys, "data", "check", path)
    assert outcome.code == 0 and f"| {path} | 2 | 2 | 0 | - |" in outcome.out, outcome.text


@pytest.mark.parametrize("value", ["-3", "0", "ten"])
def test_data_check_max_length_is_refused_as_train_refuses_it(value, tiny_model_dir, tmp_path, capsys):
    """data check reads its data keys with train's parser: the same error, naming the key and the value."""
    path = write_jsonl(tmp_path / "a.jsonl", [chat()])
    outcome = dftune(capsys, "data", "check", path, "--tokenizer", tiny_model_dir, "--max_length", value)
    clean_error(outcome, 2, "max_length", value)
    train = dftune(capsys, *train_argv(tiny_model_dir, path, tmp_path / "out", "--max_length", value))
    assert train.code == 2 and train.err == outcome.err


def test_data_check_report_into_a_folder_is_refused_before_reading(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [chat()])
    (tmp_path / "reports").mkdir()
    clean_error(dftune(capsys, "data", "check", path, "--report", tmp_path / "reports"), 2,
                f"--report {tmp_path / 'reports'} is a folder", "reports/data_report.json")


def test_data_check_report_under_a_file_is_refused(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [chat()])
    clean_error(dftune(capsys, "data", "check", path, "--report", path / "report.json"), 2,
                f"{path} is a file, not a folder")
