"""The fixtures that bound a test's work count what they claim to: a test relying on them could not pass blind."""

from __future__ import annotations

from datasets import Dataset
from transformers import AutoModelForCausalLM


def test_heavy_work_counts_model_loads_and_tokenisation(heavy_work, tiny_model_dir):
    assert not heavy_work
    AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    Dataset.from_dict({"text": ["a", "b"]}).map(lambda row: row)
    assert heavy_work == {"model loads": 1, "dataset maps": 1}
