"""`dftune train` with stage dpo end to end on the tiny model: TRL's DPOTrainer behind our config and data.

With the policy equal to its reference every pair's implicit reward is 0, so the first loss is
-log sigmoid(beta * (0 - 0)) = ln 2 ~= 0.6931, whatever beta and the data (the seed's first logged loss).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dftune.cli.main import main
from dftune.run import parse_config, run
from dftune.runtime.checkpoints import COMPLETE_MARKER

ROOT = Path(__file__).parents[2]
TINY_EXAMPLE = ROOT / "examples" / "dpo" / "tiny_dpo.yaml"
PAIRS = ROOT / "examples" / "dpo" / "data" / "addition_pairs.jsonl"
LN2 = math.log(2)


def tiny_argv(model_dir, output_dir, *extra: str) -> list[str]:
    return [
        str(TINY_EXAMPLE),
        "--model_name_or_path", str(model_dir),
        "--data_files", str(PAIRS),
        "--output_dir", str(output_dir),
        "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


def train_logs(output_dir) -> list[dict]:
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry and "train_runtime" not in entry]


@pytest.mark.slow
def test_full_model_starts_at_ln2_and_learns_a_separable_preference(tiny_model_dir, tmp_path):
    """The tiny example: chosen "a + b = c.", rejected "I do not know.", a full fine-tune for 24 steps."""
    out = tmp_path / "dpo"
    assert main(["train", *tiny_argv(tiny_model_dir, out)]) == 0
    logs = train_logs(out)
    assert len(logs) == 24
    first, last = logs[0], logs[-1]
    assert first["loss"] == pytest.approx(LN2, abs=1e-4)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    seeds_metrics = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                     "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"]  # fmt: skip
    assert set(seeds_metrics) <= set(last)
    assert last["rewards/accuracies"] > 0.9
    margins = [entry["rewards/margins"] for entry in logs]
    assert margins[-1] > margins[len(margins) // 2] > margins[2] > 0.0
    assert last["loss"] < 0.1
    assert (out / "data_report.json").is_file() and (out / "dftune_config.yaml").is_file()
    _, loading = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(loading.values()), loading  # every weight found, none unexpected or of the wrong shape


@pytest.mark.slow
def test_precomputed_reference_starts_at_ln2(tiny_model_dir, tmp_path):
    """precompute_ref_log_probs: no reference copy, the untrained policy is run over the data before step 1."""
    out = tmp_path / "dpo_pre"
    argv = tiny_argv(tiny_model_dir, out, "--precompute_ref_log_probs", "true", "--max_steps", "2")
    assert main(["train", *argv]) == 0
    assert train_logs(out)[0]["loss"] == pytest.approx(LN2, abs=1e-4)


@pytest.mark.slow
def test_seed_004_adapter_is_policy_and_frozen_reference(tiny_model_dir, tmp_path):
    """adapter_name_or_path: the adapter is both the trainable policy and the frozen reference (seed 004).

    The adapter is made with random B (init_lora_weights=False), so it differs from the base model: a loss of
    ln 2 at step 1 shows the reference is the adapter, not the base with adapters disabled.
    """
    adapter_dir = tmp_path / "sft_lora"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(adapter_dir)
    saved = load_file(adapter_dir / "adapter_model.safetensors")

    out = tmp_path / "dpo_lora"
    argv = tiny_argv(tiny_model_dir, out, "--finetuning_type", "lora", "--adapter_name_or_path", str(adapter_dir),
                     "--max_steps", "4", "--learning_rate", "1e-2")  # fmt: skip
    trainer = run(parse_config(argv))
    assert train_logs(out)[0]["loss"] == pytest.approx(LN2, abs=1e-4)
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    params = dict(model.named_parameters())
    for key, value in saved.items():  # base_model.model.<module>.lora_A.weight -> ...lora_A.<adapter>.weight
        stem = key.removesuffix(".weight")
        ref, policy = params[f"{stem}.ref.weight"], params[f"{stem}.default.weight"]
        assert not ref.requires_grad
        torch.testing.assert_close(ref.detach(), value, rtol=0, atol=0)  # the reference never moved
    assert any(not torch.equal(params[f"{k.removesuffix('.weight')}.default.weight"].detach(), v)
               for k, v in saved.items())  # the policy did  # fmt: skip
    assert (out / "adapter_model.safetensors").is_file()


def test_bad_preference_record_is_reported_before_any_model_loads(tiny_model_dir, tmp_path, capsys):
    good = PAIRS.read_text(encoding="utf-8").splitlines()[:3]
    data = tmp_path / "pairs.jsonl"
    bad = [json.dumps({"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}), '{"prompt": "broken"']
    data.write_text("\n".join([good[0], bad[0], good[1], bad[1], good[2]]) + "\n", encoding="utf-8")
    out = tmp_path / "dpo_bad"
    argv = tiny_argv(tiny_model_dir, out)
    argv[argv.index("--data_files") + 1] = str(data)
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{data}:2: chosen equals rejected" in err
    assert f"{data}:4: invalid JSON" in err
    assert "on_bad_record: skip" in err
    report = json.loads((out / "data_report.json").read_text())
    assert (report["total"], report["kept"], report["rejected"]) == (5, 3, 2)


@pytest.mark.slow
def test_nonfinite_dpo_steps_stop_with_a_complete_checkpoint(nan_model_dir, tmp_path, capsys):
    """dftune's guards hold for DPO too: NaN weights give 3 skipped steps, a marked checkpoint and exit 1."""
    out = tmp_path / "dpo_nan"
    code = main(["train", *tiny_argv(nan_model_dir, out, "--save_steps", "100")])
    err = capsys.readouterr().err
    assert code == 1 and "3 steps in a row had a non-finite loss or gradient norm" in err and "Traceback" not in err
    assert (out / "checkpoint-3" / COMPLETE_MARKER).is_file()
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert [e["nonfinite_steps"] for e in state["log_history"] if "loss" in e] == [1, 1, 1]
