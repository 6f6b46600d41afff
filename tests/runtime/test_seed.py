"""`seed` fixes what building a run draws, not only training: LoRA's initial A matrices come from the seed (the
Trainer seeds after the model exists, so they used to come from torch's default state, the same for every seed)."""

from __future__ import annotations

import json

import torch

from dftune.run import build_trainer, parse_config


def lora_a(model_dir, data, tmp_path, seed: int) -> dict[str, torch.Tensor]:
    """The initial LoRA A matrices of a run built with `seed`."""
    argv = ["--model_name_or_path", str(model_dir), "--data_files", str(data), "--finetuning_type", "lora",
            "--use_cpu", "true", "--report_to", "none", "--seed", str(seed), "--output_dir", str(tmp_path / "out")]
    model = build_trainer(parse_config(argv), callbacks=[]).model
    return {name: value.detach().clone() for name, value in model.named_parameters() if "lora_A" in name}


def test_the_seed_draws_the_lora_initialisation(tiny_model_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")  # fmt: skip
    torch.manual_seed(123)  # whatever state the process is in, the seed decides
    first = lora_a(tiny_model_dir, data, tmp_path, seed=1)
    again, other = lora_a(tiny_model_dir, data, tmp_path, seed=1), lora_a(tiny_model_dir, data, tmp_path, seed=2)
    assert first and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not any(torch.equal(first[name], other[name]) for name in first)
