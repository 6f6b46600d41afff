"""`dftune train` end to end with the seeds' own interfaces: real Trainer, real model, real files on disk."""

from __future__ import annotations

import json
import textwrap

import pytest
from safetensors.torch import load_file
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main


def write_chat_files(tmp_path, n_files: int = 3, per_file: int = 16) -> list[str]:
    """Several JSONL files of multi-turn ChatML, as the seed trainer merges them."""
    paths = []
    for f in range(n_files):
        lines = []
        for i in range(per_file):
            a, b = f * 10 + i, i + 3
            messages = [
                {"role": "system", "content": "You add numbers."},
                {"role": "user", "content": f"{a} + {b}?"},
                {"role": "assistant", "content": str(a + b)},
                {"role": "user", "content": "And doubled?"},
                {"role": "assistant", "content": str(2 * (a + b))},
            ]
            lines.append(json.dumps({"messages": messages}))
        path = tmp_path / f"data_part{f}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths


def history(output_dir) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


@pytest.mark.slow
def test_seed_000_train_sh_flags(tiny_model_dir, tmp_path):
    """Every flag of seed 000's train.sh, with a local tiny model, sdpa, no DeepSpeed and no tracker."""
    out, logs = tmp_path / "output_model", tmp_path / "logs"
    argv = [
        "train",
        "--model_name_or_path", str(tiny_model_dir),
        "--torch_dtype", "bfloat16",
        "--attn_implementation", "sdpa",
        "--trust_remote_code", "True",
        "--data_files", *write_chat_files(tmp_path),
        "--max_length", "8192",
        "--preprocessing_num_workers", "2",
        "--validation_split_percentage", "10.0",
        "--enable_gradient_checkpointing", "True",
        "--dft_alpha", "0.7",
        "--bf16", "True",
        "--use_cpu", "True",
        "--num_train_epochs", "1",
        "--per_device_train_batch_size", "1",
        "--per_device_eval_batch_size", "1",
        "--learning_rate", "2e-6",
        "--lr_scheduler_type", "cosine",
        "--weight_decay", "0.01",
        "--gradient_accumulation_steps", "16",
        "--eval_strategy", "steps",
        "--eval_steps", "2",
        "--save_strategy", "steps",
        "--save_steps", "200",
        "--save_total_limit", "3",
        "--save_only_model", "True",
        "--report_to", "none",
        "--logging_steps", "1",
        "--warmup_ratio", "0.05",
        "--output_dir", str(out),
        "--logging_dir", str(logs),
        "--remove_unused_columns", "False",
        "--ddp_find_unused_parameters", "False",
    ]  # fmt: skip
    assert main(argv) == 0

    log = history(out)
    train_logs = [e for e in log if "loss" in e and "train_runtime" not in e]
    assert len(train_logs) == 3  # 48 records - 5 held out = 43, in steps of 1 x 16 (the last one partial)
    for entry in train_logs:
        assert entry["dft_alpha"] == pytest.approx(0.7)
        assert 0.0 < entry["avg_p_correct"] < 1.0 and entry["ce"] > 0.0
    evals = [e for e in log if "eval_loss" in e]
    assert evals and {"eval_ce", "eval_avg_p_correct", "eval_token_accuracy"} <= set(evals[-1])

    assert (out / "dftune_config.yaml").is_file() and (out / "data_report.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template


@pytest.mark.slow
def test_seed_002_bft_lora_yaml(tiny_model_dir, tmp_path):
    """Seed 002's LLaMA-Factory-style YAML (BFT, LoRA on all linear layers, gradient checkpointing) trains every
    adapter and saves a loadable one."""
    out = tmp_path / "bft"
    config = tmp_path / "bft.yaml"
    config.write_text(textwrap.dedent(f"""
        ### model
        model_name_or_path: {tiny_model_dir}
        ### method
        stage: sft
        do_train: true
        finetuning_type: lora
        lora_rank: 16
        lora_target: all
        use_bft_loss: true
        enable_gradient_checkpointing: true
        ### dataset
        data_files: {json.dumps(write_chat_files(tmp_path, n_files=2))}
        cutoff_len: 256
        ### train
        output_dir: {out}
        per_device_train_batch_size: 4
        gradient_accumulation_steps: 2
        learning_rate: 1.0e-3
        max_steps: 3
        logging_steps: 1
        save_strategy: "no"
        report_to: none
        use_cpu: true
    """), encoding="utf-8")  # fmt: skip
    assert main(["train", str(config), "--bft_group_size", "4"]) == 0

    train_logs = [e for e in history(out) if "loss" in e and "train_runtime" not in e]
    assert len(train_logs) == 3
    for e in train_logs:  # gamma 1: each sample's weight is 1 - its confidence, so the two means add up to 1
        assert 0.0 < e["bft_sample_weight"] < 1.0 and e["bft_sample_weight"] + e["bft_min_group_conf"] == \
            pytest.approx(1.0, abs=1e-6), e  # fmt: skip
    assert (out / "adapter_config.json").is_file()
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    targets = {name.rsplit(".", 1)[-1] for name in model.peft_config["default"].target_modules}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets
    assert "lm_head" not in targets
    # lora_B starts at zero: every one that moved got a gradient through the checkpointed layers.
    lora_b = {n: t for n, t in load_file(out / "adapter_model.safetensors").items() if "lora_B" in n}
    assert len(lora_b) == 7 * model.config.num_hidden_layers and all(t.abs().max() > 0 for t in lora_b.values())


def test_bad_record_stops_before_model_loads(tiny_model_dir, tmp_path, capsys):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    data = tmp_path / "mixed.jsonl"
    data.write_text(f"{good}\n{{broken\n{good}\n", encoding="utf-8")
    code = main(["train", "--model_name_or_path", str(tiny_model_dir), "--data_files", str(data),
                 "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{data}:2" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--model_name_or_path", str(tmp_path / "nope"), "--data_files", "x.jsonl"])
    err = capsys.readouterr().err
    assert code == 2 and "no such folder" in err and "Traceback" not in err


def test_flash_attention_without_package_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    data = write_chat_files(tmp_path, n_files=1, per_file=2)
    code = main(["train", "--model_name_or_path", str(tiny_model_dir), "--data_files", *data,
                 "--attn_implementation", "flash_attention_2", "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install flash-attn" in err and "sdpa" in err
