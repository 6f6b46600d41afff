"""`dftune merge-lora`: the merged plain model computes the same logits as base + adapter."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main


def test_merged_model_equals_adapted_model(tiny_model_dir, tmp_path, capsys):
    torch.manual_seed(0)
    adapted = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    adapted.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")

    assert main(["merge-lora", "--base", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"),
                 "--output_dir", str(tmp_path / "merged")]) == 0
    assert "merged model written" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64)
    assert not isinstance(merged, PeftModel) and not (tmp_path / "merged" / "adapter_config.json").exists()

    ids = torch.tensor([AutoTokenizer.from_pretrained(tmp_path / "merged")("What is 2 + 2?")["input_ids"]])
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64), tmp_path / "adapter"
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    with torch.no_grad():
        expected, got, plain = reloaded(ids).logits, merged(ids).logits, base(ids).logits
    assert (expected - plain).abs().max() > 1e-3, "the adapter must change the logits for the test to mean anything"
    # The merge runs in the checkpoint's float32: equal up to float32 rounding of the merged weights.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_merge_without_adapter_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    code = main(["merge-lora", "--base", str(tiny_model_dir), "--adapter", str(tmp_path), "--output_dir",
                 str(tmp_path / "out")])
    assert code == 2 and "no adapter_config.json" in capsys.readouterr().err
