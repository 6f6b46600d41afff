"""Reading files: formats, encodings, locations, and how a path that is not there is reported."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dftune.data import load_records
from dftune.data.readers import resolve_sources
from dftune.errors import DftuneError

from .conftest import chat, write_jsonl


def test_bom_crlf_and_blank_lines(tmp_path):
    body = "\r\n".join(json.dumps(chat(f"q{i}")) for i in range(3))
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.replace("\r\n", "\r\n\r\n  \r\n").encode() + b"\r\n\r\n")
    records = list(load_records([str(path)]))
    assert [r.reason for r in records] == [None] * 3
    assert [r.location.line for r in records] == [1, 4, 7]
    assert records[2].value == chat("q2")


def test_invalid_json_and_non_utf8_lines_are_located(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"messages": []}\n{not json\n{"x": "\xff\xfe"}\n')
    records = list(load_records([str(path)]))
    assert [(str(r.location), r.reason) for r in records] == [
        (f"{path}:1", None),
        (f"{path}:2", "invalid JSON"),
        (f"{path}:3", "non-UTF-8 bytes"),
    ]


def test_json_array_uses_indexes_and_keeps_good_records_around_bad_bytes(tmp_path):
    path = tmp_path / "a.json"
    good = json.dumps(chat()).encode()
    path.write_bytes(b"\xef\xbb\xbf[" + good + b', {"messages": "\xff"}, ' + good + b"]")
    records = list(load_records([str(path)]))
    assert [(r.location.index, r.reason) for r in records] == [(0, None), (1, "non-UTF-8 bytes"), (2, None)]


def test_broken_json_array_is_one_located_error(tmp_path):
    """The elements before the break are records of their own (counted, checked); the break is one located error."""
    path = tmp_path / "a.json"
    path.write_text('[\n{"messages": []},\n{oops}\n]')
    first, record = load_records([str(path)])
    assert (first.location.index, first.reason) == (0, None)
    assert (record.location.line, record.reason) == (3, "invalid JSON") and "after 1 element:" in record.detail


def test_json_lines_saved_as_json(tmp_path):
    path = write_jsonl(tmp_path / "a.json", [chat("a"), chat("b")])
    assert [r.location.line for r in load_records([str(path)])] == [1, 2]


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([chat("a"), chat("b")]), path)
    records = list(load_records([str(path)]))
    assert [r.location.index for r in records] == [0, 1]
    assert records[1].value == chat("b")


def test_directories_and_globs_expand_sorted_without_duplicates(tmp_path):
    for name in ("b.jsonl", "a.json", "notes.txt"):
        write_jsonl(tmp_path / name, [chat()])
    expected = [str(tmp_path / "a.json"), str(tmp_path / "b.jsonl")]
    assert resolve_sources([str(tmp_path)]) == expected
    assert resolve_sources([str(tmp_path / "*.js*"), str(tmp_path / "a.json")]) == expected


@pytest.mark.parametrize("spec", ["missing/train.jsonl", "./nothing_here", "data/*.jsonl"])
def test_missing_paths_name_the_path(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DftuneError, match=spec.replace("*", r"\*").replace(".", r"\.")):
        resolve_sources([spec])


def test_hub_name_that_cannot_be_loaded_is_a_clear_error(tmp_path, monkeypatch):
    """No network here: a Hub-looking name that is not a local path must fail with its name, not a traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    with pytest.raises(DftuneError, match="not found locally: someone/no-such-dataset"):
        list(load_records(["someone/no-such-dataset"]))
