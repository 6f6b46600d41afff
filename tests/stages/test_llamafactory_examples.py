"""LLaMA-Factory's example LoRA SFT and LoRA DPO YAMLs (train_lora/*_lora_sft.yaml, *_lora_dpo.yaml: their key
sets, written here from the public format) with a `data/` folder, trained as written on CPU with only the model
path changed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dftune.cli.main import main

# tests/data/llamafactory_files.py writes the data folder (tests/stages is not a package: load it by path).
_spec = importlib.util.spec_from_file_location(
    "llamafactory_files", Path(__file__).parents[1] / "data" / "llamafactory_files.py"
)
llamafactory_files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llamafactory_files)

SFT_YAML = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""

DPO_CHANGES = {
    "stage: sft": "stage: dpo",
    "lora_target: all\n": "lora_target: all\npref_beta: 0.1\n"
                          "pref_loss: sigmoid  # choices: [sigmoid (dpo), orpo, simpo]\n",
    "dataset: identity,alpaca_en_demo": "dataset: dpo_en_demo",
    "saves/llama3-8b/lora/sft": "saves/llama3-8b/lora/dpo",
    "learning_rate: 1.0e-4": "learning_rate: 5.0e-6",
}


@pytest.mark.slow
def test_lora_sft_example_trains_as_written(tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # dataset_dir: data, relative to the working directory as LLaMA-Factory reads it
    monkeypatch.setenv("DFTUNE_CACHE", str(tmp_path / "cache"))
    llamafactory_files.write_data_folder(tmp_path)
    config = tmp_path / "llama3_lora_sft.yaml"
    config.write_text(SFT_YAML.format(model=tiny_model_dir), encoding="utf-8")
    assert main(["train", str(config)]) == 0
    out = tmp_path / "saves/llama3-8b/lora/sft"
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_curves.png").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6  # 12 records x 3 epochs / (1 x 8), each epoch's last step partial
    report = json.loads((out / "data_report.json").read_text())
    assert report["kept"] == 12 and set(report["files"]) == {"data/identity.json", "data/alpaca_en_demo.json"}
    assert "template: llama3 is LLaMA-Factory's name" in caplog.text


@pytest.mark.slow
def test_lora_dpo_example_trains_as_written(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFTUNE_CACHE", str(tmp_path / "cache"))
    llamafactory_files.write_data_folder(tmp_path)
    text = SFT_YAML.format(model=tiny_model_dir)
    for old, new in DPO_CHANGES.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "llama3_lora_dpo.yaml"
    config.write_text(text, encoding="utf-8")
    assert main(["train", str(config)]) == 0
    out = tmp_path / "saves/llama3-8b/lora/dpo"
    assert (out / "adapter_model.safetensors").is_file()
    saved = (out / "dftune_config.yaml").read_text()
    assert "beta: 0.1" in saved and "- sigmoid" in saved


def test_pref_loss_names_trls_losses_or_fails(tmp_path):
    from dftune.errors import DftuneError
    from dftune.run import parse_config

    config = parse_config(["--stage", "dpo", "--pref_loss", "ipo", "--pref_beta", "0.2", "--output_dir", "o"])
    assert config.stage_args.loss_type == ["ipo"] and config.stage_args.beta == 0.2
    with pytest.raises(DftuneError, match="pref_loss: orpo is not a loss of TRL's DPOTrainer"):
        parse_config(["--stage", "dpo", "--pref_loss", "orpo", "--output_dir", "o"])


def test_trl_sftconfig_spellings(tmp_path):
    from dftune.errors import DftuneError
    from dftune.run import parse_config

    config = parse_config(["--loss_type", "dft", "--padding_free", "true", "--assistant_only_loss", "true",
                           "--completion_only_loss", "true", "--output_dir", "o"])  # fmt: skip
    assert config.method.loss == "dft" and config.data.packing is True
    assert parse_config(["--loss_type", "nll", "--output_dir", "o"]).method.loss == "sft"
    with pytest.raises(DftuneError, match="assistant_only_loss: false"):
        parse_config(["--assistant_only_loss", "false", "--output_dir", "o"])
    dpo = parse_config(["--stage", "dpo", "--loss_type", "hinge", "--output_dir", "o"])
    assert dpo.stage_args.loss_type == ["hinge"]  # under stage dpo, loss_type stays TRL's DPO loss


def test_template_needs_a_chat_template(tiny_model_dir, tmp_path, capsys):
    """template: <name> with a tokenizer that has no chat template (and no chat_template key) is an error, before
    any weights load; with chat_template given it is accepted."""
    import shutil

    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")  # fmt: skip
    argv = ["train", "--model_name_or_path", str(model), "--data_files", str(data), "--template", "qwen",
            "--output_dir", str(tmp_path / "o"), "--max_steps", "1", "--report_to", "none",
            "--dataset_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 2
    assert "template: qwen names one of LLaMA-Factory's templates" in capsys.readouterr().err
    from dftune.data.encode import CHATML_TEMPLATE

    (tmp_path / "t.jinja").write_text(CHATML_TEMPLATE)
    assert main([*argv, "--chat_template", str(tmp_path / "t.jinja"), "--save_strategy", "no"]) == 0


def long_dpo_demo(n: int = 8) -> list[dict]:
    """dpo_en_demo's form with its real lengths: most prompts longer than cutoff_len 2048 in the byte-level tokenizer
    (one token per ASCII character), one multi-turn prompt, one reply longer than the whole budget."""
    records = []
    for i in range(n):
        question = f"Summarise this text {i}: " + "the quick brown fox jumps over the lazy dog. " * (60 + 10 * i)
        chosen, rejected = f"A fox jumps {i}.", f"No {i}."
        if i == n - 1:
            question, chosen = "Write a long story.", "Once upon a time " * 200
        turns = [{"from": "human", "value": question}]
        if i == 0:
            turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, *turns]
        records.append({"conversations": turns, "chosen": {"from": "gpt", "value": chosen},
                        "rejected": {"from": "gpt", "value": rejected}})  # fmt: skip
    return records


def test_lora_dpo_example_cuts_over_length_pairs_and_reports_them(tiny_model_dir, tmp_path, monkeypatch):
    """LLaMA-Factory's LoRA DPO YAML as written (cutoff_len 2048) on dpo_en_demo-style data whose prompts are longer
    than that: every pair is kept, cut, and the data report says what was cut (the data stage dpo trains on)."""
    from dftune.data.preference import prepare_preference_datasets
    from dftune.run import parse_config
    from dftune.stages.common import chat_tokenizer
    from dftune.stages.dpo import preference_limits

    monkeypatch.chdir(tmp_path)
    data = llamafactory_files.write_data_folder(tmp_path)
    records = long_dpo_demo()
    (data / "dpo_en_demo.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    text = SFT_YAML.format(model=tiny_model_dir)
    for old, new in DPO_CHANGES.items():
        text = text.replace(old, new)
    config_path = tmp_path / "llama3_lora_dpo.yaml"
    config_path.write_text(text, encoding="utf-8")
    config = parse_config([str(config_path)])
    config.data.dataset_cache_dir = str(tmp_path / "cache")
    prepared = prepare_preference_datasets(config.data, chat_tokenizer(config), limits=preference_limits(config),
                                           seed=0, report_path=tmp_path / "data_report.json")  # fmt: skip
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["kept"] == report["total"] == 8 and report["rejected"] == 0 and len(prepared.train) == 8
    assert all(len(p) + max(len(c), len(r)) <= 2048 for p, c, r in
               zip(prepared.train["prompt_ids"], prepared.train["chosen_ids"], prepared.train["rejected_ids"]))

    # ChatML in the byte-level tokenizer: a turn is <|im_start|> + role + "\n" + content + <|im_end|> + "\n", the
    # generation header <|im_start|> + "assistant\n"; a reply is its content + <|im_end|> + "\n".
    def turn(role: str, content: str) -> int:
        return 1 + len(role) + 1 + len(content) + 2

    expected_cut, over = 0, 0
    for record in records:
        prompt = sum(turn("user" if t["from"] == "human" else "assistant", t["value"]) for t in record["conversations"])
        prompt += 1 + len("assistant\n")
        replies = [len(record[k]["value"]) + 2 for k in ("chosen", "rejected")]
        if prompt + max(replies) > 2048:
            over += 1
            room = max(2048 - max(replies), min(prompt, 1024))  # a long reply keeps at least reply_share 0.5
            expected_cut += prompt - room + sum(max(0, r - (2048 - room)) for r in replies)
    print(json.dumps(report["lengths"]), over, expected_cut)
    assert report["lengths"] == {"dpo_en_demo": {"over_length": over, "split": 0, "samples": over,
                                                 "tokens_cut": expected_cut, "chars_clipped": 0}}
