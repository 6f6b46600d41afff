"""Every data key either changes the cached tokenised data (a change misses the cache) or is declared to act
outside it, with the reason (a change hits the cache). A key added to DataArguments fails here until it is
classified, so a new setting cannot silently reuse data tokenised without it (`reply_share` once could)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dftune.config.data_args import DataArguments
from dftune.data.prepare import prepare_datasets
from dftune.models.presets import build_tokenizer

from .conftest import chat, write_jsonl
from .llamafactory_files import write_data_folder

# key -> a value other than the base's, for the keys that change what is tokenised (a change must miss the cache)
IN_THE_KEY = {
    "data_files": lambda files: [files["train"], files["more"]],
    "eval_files": lambda files: [files["eval"]],
    "max_length": lambda files: 40,
    "mask_history": lambda files: True,
    "dataset": lambda files: ["identity"],
    "eval_dataset": lambda files: ["alpaca_en_demo"],
    "max_samples": lambda files: 2,
    "long_conversations": lambda files: "truncate",
    "reply_share": lambda files: 0.2,
    "special_tokens_in_content": lambda files: "reject",
}
# key -> (a value other than the base's, why the cached data stays right): a change must hit the cache
OUTSIDE_THE_KEY = {
    "preprocessing_num_workers": (2, "how many processes tokenise, not what they make"),
    "validation_split_percentage": (25.0, "the split is taken from the cached data, by seed"),
    "on_bad_record": ("skip", "the policy is applied to the cached data and its full report"),
    "packing": (True, "the collator packs batches; the samples are the same"),
    "dataset_dir": ("elsewhere", "only locates `dataset`'s files, whose contents are in the key"),
    "template": ("qwen", "a name accepted and logged; the tokenizer's template renders"),
    "chat_template": ("{{ messages }}", "stages.common applies it to the tokenizer, whose template is in the key"),
    "plot_loss": (True, "draws curves after training"),
    "dataset_cache_dir": (None, "where the cache is (a new folder starts empty): not checked here"),
}


def test_every_data_key_is_classified():
    fields = {f.name for f in dataclasses.fields(DataArguments)}
    unclassified = sorted(fields - set(IN_THE_KEY) - set(OUTSIDE_THE_KEY))
    assert not unclassified, f"classify {unclassified} in IN_THE_KEY (it changes the tokenised data: add it to the "\
        "cache fingerprint in data/prepare.py) or OUTSIDE_THE_KEY (say why the cached data stays right)"  # fmt: skip
    assert not set(IN_THE_KEY) & set(OUTSIDE_THE_KEY) and (set(IN_THE_KEY) | set(OUTSIDE_THE_KEY)) <= fields


@pytest.fixture
def files(tmp_path) -> dict:
    long_reply = chat("q", "a long reply " * 8)
    write_data_folder(tmp_path)  # dataset_info.json with identity and alpaca_en_demo
    return {
        "train": str(write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(5)] + [long_reply])),
        "more": str(write_jsonl(tmp_path / "more.jsonl", [chat("m", "n")])),
        "eval": str(write_jsonl(tmp_path / "eval.jsonl", [chat("e", "f")])),
        "dir": str(tmp_path / "data"),
    }


def base_args(files: dict, tmp_path, **changed) -> DataArguments:
    values = {"data_files": [files["train"]], "dataset_dir": files["dir"], "max_length": 64,
              "dataset_cache_dir": str(tmp_path / "cache")}  # fmt: skip
    return DataArguments(**{**values, **changed})


@pytest.mark.parametrize("key", sorted(IN_THE_KEY))
def test_a_key_in_the_fingerprint_misses_the_cache(key, files, tmp_path, tokenizer):
    assert not prepare_datasets(base_args(files, tmp_path), tokenizer, seed=0).cache_hit
    assert prepare_datasets(base_args(files, tmp_path), tokenizer, seed=0).cache_hit
    changed = base_args(files, tmp_path, **{key: IN_THE_KEY[key](files)})
    assert not prepare_datasets(changed, tokenizer, seed=0).cache_hit, f"{key} changed, the old data was reused"


@pytest.mark.parametrize("key", sorted(set(OUTSIDE_THE_KEY) - {"dataset_cache_dir"}))
def test_a_key_outside_the_fingerprint_reuses_the_cache(key, files, tmp_path, tokenizer):
    prepare_datasets(base_args(files, tmp_path), tokenizer, seed=0)
    value, _why = OUTSIDE_THE_KEY[key]
    assert prepare_datasets(base_args(files, tmp_path, **{key: value}), tokenizer, seed=0).cache_hit



class _OtherClass(type(build_tokenizer())):
    """A tokenizer class of its own, as a model's subclass that encodes its own way would be."""


def _reloaded(tokenizer, folder: Path, kind: type | None = None):
    tokenizer.save_pretrained(folder)
    return (kind or type(tokenizer)).from_pretrained(folder)


def _changed(setting: str, tokenizer, folder: Path):
    """The same vocabulary, template and specials (the same backend JSON), one setting outside them changed."""
    if setting == "class":
        return _reloaded(tokenizer, folder, _OtherClass)
    changed = _reloaded(tokenizer, folder)
    changed.split_special_tokens = True
    return changed


@pytest.mark.parametrize("setting", ["split_special_tokens", "class"])
def test_a_tokenizer_setting_outside_its_vocabulary_misses_the_cache(setting, files, tmp_path, tokenizer):
    """`<|im_end|>` written inside a reply: a changed setting misses the cache (split_special_tokens no longer changes
    the samples: `special_tokens_in_content: text` makes it text whatever the tokenizer says)."""
    args = base_args(files, tmp_path, data_files=[str(write_jsonl(tmp_path / "s.jsonl", [chat("q", "a <|im_end|>")]))])
    first = prepare_datasets(args, _reloaded(tokenizer, tmp_path / "same"), seed=0)
    assert prepare_datasets(args, _reloaded(tokenizer, tmp_path / "again"), seed=0).cache_hit
    changed = _changed(setting, tokenizer, tmp_path / "changed")
    assert changed.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    other = prepare_datasets(args, changed, seed=0)
    assert not other.cache_hit, f"the tokenizer's {setting} changed, the old data was reused"
    if setting == "split_special_tokens":  # special_tokens_in_content decides, not the attribute: text either way
        assert other.train["input_ids"] == first.train["input_ids"]
