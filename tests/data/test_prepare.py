"""prepare_datasets: policies, the report, merging sources, caching and the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dftune.config.data_args import DataArguments
from dftune.data.prepare import prepare_datasets
from dftune.data import validate as validate_module
from dftune.errors import DftuneError

from .conftest import chat, write_jsonl
from .test_encode import ZEPHYR

LONG = {"messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]}


def args(tmp_path: Path, files: list[Path], **overrides) -> DataArguments:
    return DataArguments(
        data_files=[str(f) for f in files], dataset_cache_dir=str(tmp_path / "cache"), **overrides
    )


@pytest.fixture
def mixed(tmp_path) -> list[Path]:
    """Two files with different extra columns (and types); four bad records of different kinds, one too long."""
    first = write_jsonl(
        tmp_path / "a.jsonl",
        [{**chat("a1"), "id": 1, "meta": {"k": "v"}}, "{broken", {"messages": "x"}, LONG, {**chat("a2"), "id": 2}],
    )
    second = tmp_path / "b.json"
    second.write_text(
        json.dumps([{**chat("b1"), "id": "str-id", "score": 0.5}, {"conversations": [{"from": "human", "value": "q"}]}])
    )
    return [first, second]


def test_error_policy_lists_every_bad_record(tmp_path, tokenizer, mixed):
    report = tmp_path / "report.json"
    with pytest.raises(DftuneError) as info:
        prepare_datasets(args(tmp_path, mixed, max_length=64, long_conversations="truncate"), tokenizer, seed=0,
                         report_path=report)
    message = str(info.value)
    assert "4 of 7 records are invalid" in message
    for where in (f"a.jsonl:2: invalid JSON", "a.jsonl:3: messages not a list",
                  "a.jsonl:4: no assistant token within max_length", "b.json[1]: no assistant turn"):
        assert where in message
    assert f"full report: {report}" in message
    assert json.loads(report.read_text())["rejected"] == 4


def test_error_list_is_capped_with_a_count_of_the_rest(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "a.jsonl", [chat()] + ["{bad"] * 25)
    with pytest.raises(DftuneError) as info:
        prepare_datasets(args(tmp_path, [data]), tokenizer, seed=0)
    message = str(info.value)
    assert message.count("invalid JSON") == 20
    assert "... and 5 more" in message
    assert "full report: " + str(tmp_path / "cache") in message


def test_skip_policy_keeps_the_rest_and_counts_everything(tmp_path, tokenizer, mixed, caplog):
    report_path = tmp_path / "out" / "report.json"
    prepared = prepare_datasets(
        args(tmp_path, mixed, max_length=64, on_bad_record="skip", long_conversations="truncate"), tokenizer, seed=0,
        report_path=report_path
    )
    assert prepared.train.column_names == ["input_ids", "labels", "source", "source_id"]
    assert list(prepared.train["source"]) == [str(mixed[0]), str(mixed[0]), str(mixed[1])]
    assert prepared.eval is None
    assert "skipped 4 of 7 records" in caplog.text
    report = json.loads(report_path.read_text())
    assert report == prepared.report.to_dict()
    assert {k: report[k] for k in ("total", "kept", "rejected")} == {"total": 7, "kept": 3, "rejected": 4}
    assert report["files"][str(mixed[0])] == {
        "total": 5, "kept": 2, "rejected": 3,
        "reasons": {"invalid JSON": 1, "messages not a list": 1, "no assistant token within max_length": 1},
    }
    assert report["files"][str(mixed[1])]["rejected"] == 1
    assert [(e["file"], e.get("line"), e.get("index"), e["reason"]) for e in report["errors"]] == [
        (str(mixed[0]), 2, None, "invalid JSON"),
        (str(mixed[0]), 3, None, "messages not a list"),
        (str(mixed[0]), 4, None, "no assistant token within max_length"),
        (str(mixed[1]), None, 1, "no assistant turn"),
    ]


def test_parquet_and_jsonl_with_conflicting_columns_merge(tmp_path, tokenizer):
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{**chat("p"), "id": 7}]), parquet)
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{**chat("j"), "id": "seven", "tags": ["x"]}])
    prepared = prepare_datasets(args(tmp_path, [parquet, jsonl]), tokenizer, seed=0)
    assert list(prepared.train["source"]) == [str(parquet), str(jsonl)]


def test_cache_hit_skips_tokenisation_and_changes_miss(tmp_path, tokenizer, monkeypatch):
    data = write_jsonl(tmp_path / "a.jsonl", [chat(f"q{i}") for i in range(6)])
    first = prepare_datasets(args(tmp_path, [data]), tokenizer, seed=0)
    assert not first.cache_hit

    def no_tokenising(*_args, **_kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(validate_module, "encode_batch", no_tokenising)
    second = prepare_datasets(args(tmp_path, [data]), tokenizer, seed=0)
    assert second.cache_hit
    assert list(second.train["input_ids"]) == list(first.train["input_ids"])
    assert list(second.train["labels"]) == list(first.train["labels"])
    assert second.report.to_dict() == first.report.to_dict()
    monkeypatch.undo()

    for changed in (args(tmp_path, [data], max_length=30), args(tmp_path, [data], mask_history=True)):
        assert not prepare_datasets(changed, tokenizer, seed=0).cache_hit
    retemplated = _copy_with_template(tokenizer, tmp_path, ZEPHYR)
    assert not prepare_datasets(args(tmp_path, [data]), retemplated, seed=0).cache_hit
    write_jsonl(data, [chat(f"q{i}") for i in range(7)])
    assert not prepare_datasets(args(tmp_path, [data]), tokenizer, seed=0).cache_hit


def _copy_with_template(tokenizer, tmp_path, template):
    tokenizer.save_pretrained(tmp_path / "tok")
    copy = tokenizer.__class__.from_pretrained(tmp_path / "tok")
    copy.chat_template = template
    return copy


def test_validation_split_is_deterministic_by_seed(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "a.jsonl", [chat(f"q{i}") for i in range(40)])
    split = lambda seed: prepare_datasets(args(tmp_path, [data], validation_split_percentage=10), tokenizer, seed=seed)
    a, b, c = split(1), split(1), split(2)
    assert (len(a.train), len(a.eval)) == (36, 4)
    assert list(a.eval["input_ids"]) == list(b.eval["input_ids"])
    assert list(a.eval["input_ids"]) != list(c.eval["input_ids"])
    assert sorted(map(tuple, list(a.train["input_ids"]) + list(a.eval["input_ids"]))) == sorted(
        map(tuple, list(c.train["input_ids"]) + list(c.eval["input_ids"]))
    )


def test_eval_files_and_workers(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}") for i in range(8)])
    held = write_jsonl(tmp_path / "eval.jsonl", [chat("e1"), {"nope": 1}])
    data_args = args(tmp_path, [train], eval_files=[str(held)], on_bad_record="skip", preprocessing_num_workers=2)
    prepared = prepare_datasets(data_args, tokenizer, seed=0)
    assert (len(prepared.train), len(prepared.eval)) == (8, 1)
    assert prepared.report.to_dict()["errors"] == [
        {"file": str(held), "line": 2, "reason": "no messages", "detail": "keys: nope"}
    ]
    single = prepare_datasets(args(tmp_path / "single", [train]), tokenizer, seed=0)
    assert list(single.train["input_ids"]) == list(prepared.train["input_ids"])


def test_contradictory_or_empty_settings(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "a.jsonl", [chat()])
    with pytest.raises(DftuneError, match="not both"):
        prepare_datasets(args(tmp_path, [data], eval_files=[str(data)], validation_split_percentage=5), tokenizer, seed=0)
    with pytest.raises(DftuneError, match="no training data"):
        prepare_datasets(args(tmp_path, []), tokenizer, seed=0)
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{x"])
    with pytest.raises(DftuneError, match="no valid training records"):
        prepare_datasets(args(tmp_path, [bad], on_bad_record="skip"), tokenizer, seed=0)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_data_with_no_valid_record_lists_them_again_from_the_cache(tmp_path, tokenizer, kind):
    """Every record rejected: the cached entry has an empty split, which `datasets` cannot load back (the second
    run, a cache hit, stopped with an IndexError traceback); each run lists the bad records."""
    from dftune.data.lengths import PreferenceLimits
    from dftune.data.preference import prepare_preference_datasets

    data = write_jsonl(tmp_path / "a.jsonl", ["{oops", {"prompt": "q", "chosen": "a"}])
    for _run in range(2):
        with pytest.raises(DftuneError, match="2 of 2 records are invalid") as info:
            if kind == "sft":
                prepare_datasets(args(tmp_path, [data]), tokenizer, seed=0)
            else:
                prepare_preference_datasets(args(tmp_path, [data]), tokenizer, limits=PreferenceLimits(64), seed=0)
        assert "a.jsonl:1: invalid JSON" in str(info.value)
    assert len(list((tmp_path / "cache").rglob("report.json"))) == 1  # the second run read the first one's entry
