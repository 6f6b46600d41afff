"""A conversation with no user turn before its reply (issue 23): kept, and the reply trained with an empty prompt.

A real ShareGPT dump holds lone `gpt` turns (25 of 3000 in one); they were rejected as "no assistant token within
max_length" although they fit. Checked through `prepare_datasets` (what `train` runs) on files in the dump's own
form, with the presets' ChatML tokenizer and the real SmolLM2 one, whose template adds a default system prompt.
"""

from __future__ import annotations

import json

import pytest

from dftune.config.data_args import DataArguments
from dftune.data.prepare import prepare_datasets

from .conftest import write_jsonl

IGNORE = -100
REPLY = " ".join(f"Step {i}: add {i} to the total." for i in range(40))  # ~500 SmolLM2 tokens


def sharegpt_dump(path):
    """ShareGPT's layout: a JSON array of {"id", "conversations": [{"from", "value"}]}, one record a lone reply."""
    records = [
        {"id": "a1", "conversations": [{"from": "human", "value": "Count to 3."}, {"from": "gpt", "value": "1 2 3"}]},
        {"id": "a2", "conversations": [{"from": "gpt", "value": REPLY}]},
        {"id": "a3", "conversations": [{"from": "system", "value": "Be terse."}, {"from": "gpt", "value": "Ok."}]},
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def trained_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    assert all(label in (IGNORE, token) for token, label in zip(input_ids, labels))
    return tokenizer.decode([token for token, label in zip(input_ids, labels) if label != IGNORE])


@pytest.mark.parametrize("name", ["tokenizer", "smollm2_tokenizer"])
def test_lone_replies_are_kept_and_trained_whole(name, request, tmp_path):
    tokenizer = request.getfixturevalue(name)
    dump = sharegpt_dump(tmp_path / "sharegpt.json")
    openai = write_jsonl(tmp_path / "openai.jsonl", [{"messages": [{"role": "assistant", "content": "Hello!"}]},
                                                     {"prompt": [], "completion": "Bye."}])  # fmt: skip
    data = DataArguments(data_files=[str(dump), str(openai)], max_length=2048, dataset_cache_dir=str(tmp_path / "c"))
    prepared = prepare_datasets(data, tokenizer, seed=0, report_path=tmp_path / "report.json")

    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["total"], report["kept"], report["rejected"], report["errors"]) == (5, 5, 0, [])
    end = "<|im_end|>"
    rows = prepared.train.to_list()
    assert [trained_text(tokenizer, r["input_ids"], r["labels"]) for r in rows] == [
        "1 2 3" + end, REPLY + end, "Ok." + end, "Hello!" + end, "Bye." + end]
    lone = tokenizer.decode(rows[1]["input_ids"])
    assert lone == tokenizer.apply_chat_template([{"role": "assistant", "content": REPLY}], tokenize=False)
    if name == "smollm2_tokenizer":  # its default system prompt is context: in the sample, not trained
        assert lone.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        assert 400 < sum(label != IGNORE for label in rows[1]["labels"]) < 600  # the issue's ~500-token reply
