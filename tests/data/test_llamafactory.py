"""LLaMA-Factory's registry: entries become named sources whose records keep file:line / file[index]."""

from __future__ import annotations

import os
import sys

import processes
import pytest

from dftune.config.data_args import DataArguments
from dftune.data.prepare import prepare_datasets
from dftune.data.llamafactory import registry_sources
from dftune.data.lengths import PreferenceLimits
from dftune.data.preference import prepare_preference_datasets
from dftune.data.validate import collect_conversations
from dftune.errors import DftuneError

from .llamafactory_files import write_data_folder


@pytest.fixture
def data_dir(tmp_path):
    return write_data_folder(tmp_path)


def test_alpaca_entries_read_as_llamafactory_does(data_dir):
    sources = registry_sources(["identity", "alpaca_en_demo"], str(data_dir), ranking=False)
    assert [s.name for s in sources] == ["identity", "alpaca_en_demo"]
    conversations, report = collect_conversations(sources)
    assert report.rejected == 0 and report.total == 12
    assert conversations.messages[7] == [{"role": "user", "content": "Add 1 and 3.\nAnswer with a number."},
                                         {"role": "assistant", "content": "4"}]  # instruction, newline, input
    assert str(conversations.locations[7]) == f"{data_dir / 'alpaca_en_demo.json'}[1]"
    assert conversations.sources[:6] == ["identity"] * 6


def test_sharegpt_tags_folder_and_system(data_dir):
    conversations, report = collect_conversations(registry_sources(["openai_style"], str(data_dir), ranking=False))
    assert conversations.messages[0] == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert conversations.messages[1][0] == {"role": "system", "content": "Sys"}  # a leading system turn
    [issue] = report.errors  # the function call rejects its record, with where it is
    assert (str(issue.location), issue.reason) == (f"{data_dir / 'chats' / 'part1.jsonl'}:2", "tool-call turn")


@pytest.mark.parametrize("entry, what", [("mllm_demo", "images"), ("kto_en_demo", "KTO"),
                                         ("glaive_toolcall_en_demo", "tool definitions")])  # fmt: skip
def test_layouts_we_do_not_train_are_errors_naming_the_entry(data_dir, entry, what):
    with pytest.raises(DftuneError, match=rf"dataset '{entry}'.*{what}"):
        registry_sources([entry], str(data_dir), ranking=False)


def test_stage_and_names_are_checked(data_dir):
    with pytest.raises(DftuneError, match="dataset 'dpo_en_demo' does not suit this stage"):
        registry_sources(["dpo_en_demo"], str(data_dir), ranking=False)
    with pytest.raises(DftuneError, match="'nope' is not in .*dataset_info.json"):
        registry_sources(["nope"], str(data_dir), ranking=False)
    with pytest.raises(DftuneError, match="dataset needs .*dataset_info.json"):
        registry_sources(["identity"], str(data_dir / "chats"), ranking=False)


def test_hub_entries_fail_offline_without_touching_the_network(data_dir, tmp_path):
    """HF_HUB_OFFLINE=1, in a fresh process (huggingface_hub reads it at import): the error names the entry, and no
    socket was ever connected (an audit hook reports each attempt), so no retry loop can stall it."""
    code = ("import sys;"
            "sys.addaudithook(lambda event, args: event == 'socket.connect' and print('CONNECT', args[1], "
            "file=sys.stderr));"
            "from dftune.data.validate import collect_conversations;"
            "from dftune.data.llamafactory import registry_sources;"
            f"collect_conversations(registry_sources(['hub_alpaca'], {str(data_dir)!r}, ranking=False))")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = processes.run([sys.executable, "-c", code], step="reading hub_alpaca offline", timeout=60, env=env,
                           capture_output=True, text=True)
    assert "CONNECT" not in result.stderr, result.stderr[-2000:]
    assert result.returncode != 0 and "dataset 'hub_alpaca'" in result.stderr and "offline" in result.stderr
    with pytest.raises(DftuneError, match="dataset 'ms_only'.*ms_hub_url"):
        collect_conversations(registry_sources(["ms_only"], str(data_dir), ranking=False))


def test_max_samples_caps_each_dataset_and_names_are_per_entry(data_dir, tmp_path, tokenizer):
    args = DataArguments(dataset=["identity,alpaca_en_demo"], dataset_dir=str(data_dir), max_samples=4,
                         dataset_cache_dir=str(tmp_path / "cache"))  # fmt: skip
    prepared = prepare_datasets(args, tokenizer, seed=0)
    assert len(prepared.train) == 8 and prepared.source_names == ["identity", "alpaca_en_demo"]
    assert sorted(set(prepared.train["source_id"])) == [0, 1]
    assert prepared.report.total == 8


def test_ranking_entries_for_stage_dpo(data_dir, tmp_path, tokenizer):
    args = DataArguments(dataset=["dpo_en_demo", "alpaca_pairs"], dataset_dir=str(data_dir),
                         dataset_cache_dir=str(tmp_path / "cache"))  # fmt: skip
    prepared = prepare_preference_datasets(args, tokenizer, limits=PreferenceLimits(args.max_length), seed=0)
    assert len(prepared.train) == 7
    first = prepared.train[0]
    assert tokenizer.decode(first["prompt_ids"]).endswith("What is 0 + 1?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(first["chosen_ids"]) == "1<|im_end|>\n"
    assert tokenizer.decode(prepared.train[6]["rejected_ids"]) == "no<|im_end|>\n"
