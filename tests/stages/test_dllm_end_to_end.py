"""Stage dllm end to end: seed 003's YAML keys, the tiny-dllm preset, LoRA, `dftune generate`, and a short
learnability smoke (the full reverse-task figure is in docs/diffusion.md)."""

from __future__ import annotations

import json
import random
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main
from dftune.run import parse_config
from dftune.models.presets import build_tokenizer, init_model


@pytest.fixture(scope="module")
def dllm_dir(tmp_path_factory):
    return init_model("tiny-dllm", tmp_path_factory.mktemp("tiny-dllm"))


def write_records(path, n: int, seed: int = 0, length: int = 3) -> str:
    """A .json list of {"input", "output"} records (seed 003's custom format): copy a short string."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcd") for _ in range(length)) for _ in range(n)]
    path.write_text(json.dumps([{"input": f"copy {w}", "output": w} for w in words]), encoding="utf-8")
    return str(path)


def seed_003_yaml(tmp_path, model_dir, data: str, out, extra: str = "") -> str:
    config = tmp_path / "default_config.yaml"
    config.write_text(textwrap.dedent(f"""
        model_name: "{model_dir}"
        local_batch_size: 4
        max_length: 64
        num_epochs: 20
        learning_rate: 1e-3
        grad_accum_steps: 2
        output_dir: "{out}"
        job_name: "llada-sft"
        train_data: "{data}"
    """) + extra, encoding="utf-8")  # fmt: skip
    return str(config)


def history(out) -> list[dict]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [e for e in log if "loss" in e and "train_runtime" not in e]


def test_seed_003_keys_map_onto_ours(tmp_path):
    config = parse_config([seed_003_yaml(tmp_path, "m", "d.json", tmp_path / "o"), "--stage", "dllm"])
    assert config.model.model_name_or_path == "m" and config.data.data_files == ["d.json"]
    assert config.training.per_device_train_batch_size == 4 and config.training.gradient_accumulation_steps == 2
    assert config.training.num_train_epochs == 20 and config.training.run_name == "llada-sft"
    assert config.method.stage == "dllm" and config.stage_args.diffusion_eps == 1e-3
    assert any("model_name mapped to model_name_or_path" in note for note in config.notes)


def test_tiny_dllm_preset_is_bidirectional_with_a_mask_token(dllm_dir):
    tokenizer = AutoTokenizer.from_pretrained(dllm_dir)
    reference = build_tokenizer()
    text = "<|im_start|>user\nhi 🙂<|im_end|>\n"
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]  # every other id unchanged
    assert tokenizer.mask_token == "<|mask|>" and tokenizer.mask_token_id == len(reference)
    model = AutoModelForCausalLM.from_pretrained(dllm_dir).eval()
    assert model.config.mask_token_id == tokenizer.mask_token_id and model.config.is_causal is False
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    changed = ids.clone()
    changed[0, -1] = tokenizer.mask_token_id
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits[0, 0], model(changed).logits[0, 0])  # the last token is seen


@pytest.mark.slow
def test_seed_003_config_trains_and_generates(dllm_dir, tmp_path, capsys):
    out = tmp_path / "sft_save"
    data = write_records(tmp_path / "train.json", 16)
    config = seed_003_yaml(tmp_path, dllm_dir, data, out, extra="max_steps: 3\nlogging_steps: 1\nreport_to: none\n")
    assert main(["train", config, "--stage", "dllm", "--use_cpu", "true", "--save_strategy", "no"]) == 0
    logs = history(out)
    assert len(logs) == 3 and all(e["loss"] > 0 and 0 <= e["token_accuracy"] <= 1 for e in logs)
    assert (out / "dftune_config.yaml").is_file()

    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "copy abc", "--max_new_tokens", "8",
                 "--steps", "4", "--block_length", "4"]) == 0
    reply = capsys.readouterr().out
    assert reply.endswith("\n") and "<|mask|>" not in reply


@pytest.mark.slow
def test_lora_dllm_and_generate_from_adapter(dllm_dir, tmp_path, capsys):
    out = tmp_path / "lora"
    data = write_records(tmp_path / "train.json", 8)
    config = seed_003_yaml(tmp_path, dllm_dir, data, out, extra="max_steps: 2\nreport_to: none\n")
    assert main(["train", config, "--stage", "dllm", "--finetuning_type", "lora", "--loss", "dft",
                 "--use_cpu", "true", "--save_strategy", "no"]) == 0
    assert (out / "adapter_config.json").is_file()
    assert main(["generate", "--model", str(out), "--prompt", "copy abc", "--max_new_tokens", "4"]) == 0


def test_causal_model_is_refused_for_dllm(tiny_model_dir, tmp_path, capsys):
    data = write_records(tmp_path / "train.json", 4)
    code = main(["train", "--stage", "dllm", "--model_name_or_path", str(tiny_model_dir), "--data_files", data,
                 "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "bidirectional" in err and "Traceback" not in err


@pytest.mark.slow
def test_learnability_smoke(dllm_dir, tmp_path):
    """A short version of docs/diffusion.md's reverse-task run: copying 3 letters, 120 steps. The masked
    tokens' accuracy rises well above chance (1/4 among the letters) and the loss falls by half."""
    out = tmp_path / "copy"
    data = write_records(tmp_path / "train.json", 256)
    config = seed_003_yaml(tmp_path, dllm_dir, data, out,
                           extra="max_steps: 120\nlogging_steps: 20\nreport_to: none\n")
    assert main(["train", config, "--stage", "dllm", "--use_cpu", "true", "--save_strategy", "no",
                 "--grad_accum_steps", "1", "--warmup_steps", "10", "--local_batch_size", "16"]) == 0
    logs = history(out)
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]
    assert logs[-1]["token_accuracy"] > 0.6


def test_reverse_example_parses_and_its_generator_runs(tmp_path):
    """examples/diffusion: the YAML docs/diffusion.md reproduces parses, and its data generator writes both files."""
    import runpy
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2] / "examples" / "diffusion"
    config = parse_config([str(root / "dllm_reverse.yaml")])
    assert config.method.stage == "dllm" and config.data.data_files == ["examples/diffusion/reverse_train.json"]
    argv, sys.argv = sys.argv, ["make_reverse_data.py", "--out_dir", str(tmp_path), "--n_train", "20",
                                "--n_eval", "5"]
    try:
        runpy.run_path(str(root / "make_reverse_data.py"), run_name="__main__")
    finally:
        sys.argv = argv
    train = json.loads((tmp_path / "reverse_train.json").read_text())
    assert len(train) == 20 and all(r["output"] == r["input"].split(": ")[1][::-1] for r in train)
    assert len((tmp_path / "reverse_eval.jsonl").read_text().splitlines()) == 5


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 1-layer BERT masked LM with the byte-level ChatML tokenizer and its <|mask|> token (a chat-less model given
    a chat format: the tokenizer's ChatML template, as every preset)."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = build_tokenizer(mask_token=True)
    model_dir = tmp_path_factory.mktemp("bert") / "bert"
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.mark.slow
def test_masked_lm_trains_and_generates(bert_dir, tmp_path, capsys):
    """Any AutoModelForMaskedLM: a 1-layer BERT with the byte-level tokenizer and its <|mask|> token."""
    model_dir = bert_dir
    out = tmp_path / "out"
    data = write_records(tmp_path / "train.json", 8)
    yaml_path = seed_003_yaml(tmp_path, model_dir, data, out, extra="max_steps: 2\nreport_to: none\n")
    assert main(["train", yaml_path, "--stage", "dllm", "--use_cpu", "true", "--save_strategy", "no"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "copy abc", "--max_new_tokens", "4"]) == 0
    assert "<|mask|>" not in capsys.readouterr().out


@pytest.mark.slow
def test_masked_lm_trains_with_lora_unfused_and_generates_from_the_adapter(bert_dir, tmp_path, capsys, caplog):
    """LoRA on a BERT masked LM: its output layer has a bias, so the loss runs unfused with one log line saying
    why; the adapter folder generates through its base model."""
    import logging

    out = tmp_path / "out"
    data = write_records(tmp_path / "train.json", 8)
    yaml_path = seed_003_yaml(tmp_path, bert_dir, data, out, extra="max_steps: 2\nreport_to: none\n")
    with caplog.at_level(logging.INFO, logger="dftune.runtime.objective_trainer"):
        code = main(["train", yaml_path, "--stage", "dllm", "--use_cpu", "true", "--save_strategy", "no",
                     "--finetuning_type", "lora", "--lora_target", "query,value"])  # fmt: skip
    assert code == 0
    reasons = [r.getMessage() for r in caplog.records if "fused_loss" in r.getMessage()]
    assert len(reasons) == 1 and "the output layer has a bias" in reasons[0], reasons
    assert (out / "adapter_config.json").is_file()
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "copy abc", "--max_new_tokens", "4"]) == 0
    assert "<|mask|>" not in capsys.readouterr().out


@pytest.mark.slow
def test_every_evaluation_writes_samples(dllm_dir, tmp_path):
    """After each evaluation: a few held-out prompts decoded, with their references, in eval_samples.jsonl."""
    out = tmp_path / "out"
    data = write_records(tmp_path / "train.json", 16)
    yaml_path = seed_003_yaml(tmp_path, dllm_dir, data, out, extra="max_steps: 2\nreport_to: none\n")
    assert main(["train", yaml_path, "--stage", "dllm", "--use_cpu", "true", "--save_strategy", "no",
                 "--validation_split_percentage", "25", "--eval_strategy", "steps", "--eval_steps", "1"]) == 0
    rows = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    # 3 per evaluation, at steps 1 and 2; step 2 is the last, so no final evaluation repeats it
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(r["prompt"] and r["reference"] and "<|mask|>" not in r["sample"] for r in rows)


@pytest.mark.slow
def test_eval_scores_a_diffusion_model_through_its_sampler(dllm_dir, tmp_path, capsys):
    """`dftune eval` on a stage dllm model: replies come from the masked-diffusion sampler, scored like any model's."""
    data = tmp_path / "heldout.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"copy {w}"}, {"role": "assistant", "content": w}]}
            for w in ("ab", "cd", "ba")]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "results.jsonl"
    for extra in ([], ["--threshold", "0.9"]):
        assert main(["eval", "--model", str(dllm_dir), "--data", str(data), "--max_new_tokens", "4",
                     "--output", str(out), *extra]) == 0  # fmt: skip
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(results) == 3 and all("<|mask|>" not in r["reply"] for r in results)
    assert "accuracy" in capsys.readouterr().out
