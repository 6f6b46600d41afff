"""EAFT, ASFT and the DFT alpha schedule through `dftune train`, written as LLaMA-Factory users write them."""

from __future__ import annotations

import json
import textwrap

import pytest
from test_sft_end_to_end import history, write_chat_files

from dftune.run import parse_config, run


def llama_factory_yaml(tmp_path, model_dir, method: str, finetuning: str = "lora") -> str:
    """A LLaMA-Factory-style LoRA SFT YAML with the objective's own keys in its method block."""
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(f"""
        ### model
        model_name_or_path: {model_dir}
        ### method
        stage: sft
        do_train: true
        finetuning_type: {finetuning}
        lora_rank: 8
        lora_target: all
        {method}
        ### dataset
        data_files: {json.dumps(write_chat_files(tmp_path, n_files=2))}
        cutoff_len: 256
        ### train
        output_dir: {tmp_path / "out"}
        per_device_train_batch_size: 4
        gradient_accumulation_steps: 2
        learning_rate: 1.0e-3
        max_steps: 4
        logging_steps: 1
        save_strategy: "no"
        report_to: none
        use_cpu: true
    """), encoding="utf-8")  # fmt: skip
    return str(path)


def train_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]


@pytest.mark.slow
def test_use_eaft_loss_trains_as_written(tiny_model_dir, tmp_path):
    config = parse_config([llama_factory_yaml(tmp_path, tiny_model_dir, "use_eaft_loss: true\n        eaft_alpha: 1.0")])
    assert config.method.loss == "eaft" and config.method.objective_kwargs() == {"alpha": 1.0, "top_k": 20}
    trainer = run(config)
    assert trainer.fused_head is not None
    logs = train_logs(trainer)
    assert len(logs) == 4
    for entry in logs:
        # EAFT keeps a share (H_top20 / 3) of SFT's gradient mass; a random model is unsure: close to ln 20 / 3.
        assert 0.0 < entry["mean_token_weight"] < 1.0 and 0.0 < entry["entropy"] < 6.0
    assert (tmp_path / "out" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_use_asft_loss_with_lora_anchors_to_the_base_without_a_copy(tiny_model_dir, tmp_path):
    config = parse_config([llama_factory_yaml(tmp_path, tiny_model_dir, "use_asft_loss: true\n        asft_alpha: 0.1")])
    assert config.method.loss == "asft"
    trainer = run(config)
    assert trainer.reference.reference is None  # the policy with its adapters disabled: one copy of the base
    assert trainer.fused_head is not None
    logs = train_logs(trainer)
    # lora_B starts at zero, so the first step's policy is the base: KL 0; then the adapters move it away.
    assert logs[0]["asft_kl"] == 0.0
    assert all(entry["asft_kl"] >= -1e-7 for entry in logs) and logs[-1]["asft_kl"] > 1e-5  # >= 0 up to rounding


@pytest.mark.slow
def test_asft_full_fine_tuning_compares_with_a_frozen_copy(tiny_model_dir, tmp_path):
    config = parse_config([llama_factory_yaml(tmp_path, tiny_model_dir, "loss: asft", finetuning="full")])
    trainer = run(config)
    reference = trainer.reference.reference
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    assert train_logs(trainer)[0]["asft_kl"] == 0.0  # the copy equals the starting model


def test_ref_model_without_an_anchor_is_an_error(tmp_path):
    from dftune.errors import DftuneError

    with pytest.raises(DftuneError, match=r"ref_model_name_or_path applies to stage: dpo and to loss: asft"):
        parse_config(["--ref_model_name_or_path", "m", "--loss", "dft"])


@pytest.mark.slow
def test_linear_alpha_schedule_is_logged_as_it_rises(tiny_model_dir, tmp_path):
    method = "dft_alpha: 0.8\n        dft_alpha_schedule: linear\n        dft_alpha_warmup_steps: 4"
    trainer = run(parse_config([llama_factory_yaml(tmp_path, tiny_model_dir, method)]))
    assert [round(e["dft_alpha"], 6) for e in train_logs(trainer)] == [0.0, 0.2, 0.4, 0.6]


@pytest.mark.parametrize(("method", "metric"), [
    ("loss: chord", "mean_token_weight"),
    ("loss: psft\n        psft_refresh_steps: 2", "psft_ratio"),
    ("loss: iw_sft\n        iw_sft_max_weight: 4.0", "iw_sft_weight"),
    ("loss: iw_sft\n        precompute_ref_log_probs: true", "iw_sft_weight"),
    ("loss: deft", "deft_order"),
    ("loss: dft\n        dft_min_weight: 0.2", "mean_token_weight"),
])
def test_round_two_objectives_train_from_yaml(tiny_model_dir, tmp_path, method, metric):
    """Each new objective (and the DFT floor) trains 4 LoRA steps from YAML through the fused head."""
    trainer = run(parse_config([llama_factory_yaml(tmp_path, tiny_model_dir, method)]))
    assert trainer.fused_head is not None
    logs = train_logs(trainer)
    assert len(logs) == 4 and all(metric in entry for entry in logs)
    if "precompute" in method:  # LoRA: the base with its adapters disabled ran once; nothing is held for training
        assert trainer.reference is None and "ref_logps" in trainer.train_dataset.column_names
    if "psft" in method:  # r = 1 right after each refresh (steps 0 and 2), off 1 once the adapters moved
        ratios = [entry["psft_ratio"] for entry in logs]
        assert ratios[0] == pytest.approx(1.0, abs=1e-6) and ratios[2] == pytest.approx(1.0, abs=1e-6)
        assert abs(ratios[1] - 1.0) > 1e-6
    if "dft_min_weight" in method:
        assert all(entry["mean_token_weight"] >= 0.2 * (1 - 1e-6) for entry in logs)  # float32 logs
