"""`dftune train` configuration: YAML + flags, the seeds' keys, legacy flags, and errors before any model loads."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from dftune.run import parse_config
from dftune.errors import DftuneError


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_flags_override_yaml_and_lists_and_bools(tmp_path):
    cfg = write(tmp_path, """
        model_name_or_path: m
        learning_rate: 1.0e-5
        data_files: [a.jsonl, b.jsonl]
        enable_gradient_checkpointing: true
    """)
    config = parse_config([str(cfg), "--learning_rate", "3e-4", "--data_files", "x.jsonl", "y.jsonl", "z.json",
                           "--trust_remote_code", "True", "--output_dir", str(tmp_path / "o")])
    assert config.training.learning_rate == 3e-4
    assert config.data.data_files == ["x.jsonl", "y.jsonl", "z.json"]
    assert config.model.enable_gradient_checkpointing is True
    assert config.model.trust_remote_code is True


@pytest.mark.parametrize(
    ("argv", "loss"),
    [
        ([], "sft"),
        (["--use_dft_loss", "true"], "dft"),
        (["--dft_alpha", "0.7"], "dft"),
        (["--use_bft_loss", "true"], "bft"),
        (["--use_bft_loss", "true", "--use_dft_loss", "true"], "bft"),  # the seed's hook order: BFT wins
        (["--loss", "bft", "--use_bft_loss", "true"], "bft"),
    ],
)
def test_loss_selection(argv, loss):
    assert parse_config(argv).method.loss == loss


def test_seed_002_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("BFT_GROUP_SIZE", "32")
    monkeypatch.setenv("BFT_CONF_GAMMA", "2.0")
    cfg = write(tmp_path, """
        ### method
        stage: sft
        do_train: true
        finetuning_type: lora
        lora_rank: 16
        lora_target: all
        use_bft_loss: true
    """)
    config = parse_config([str(cfg)])
    assert (config.method.loss, config.method.bft_group_size, config.method.bft_gamma) == ("bft", 32, 2.0)
    assert config.method.finetuning_type == "lora" and config.method.lora_target == ["all"]
    assert config.training.do_train is True
    assert parse_config([str(cfg), "--bft_group_size", "8"]).method.bft_group_size == 8  # keys beat env


def test_lora_target_comma_list():
    assert parse_config(["--lora_target", "q_proj,v_proj"]).method.lora_target == ["q_proj", "v_proj"]


def test_legacy_flags_are_mapped_with_notes(tmp_path):
    config = parse_config(["--logging_dir", str(tmp_path / "logs"), "--evaluation_strategy", "steps",
                           "--overwrite_output_dir", "True", "--eval_steps", "5"])
    assert config.training.eval_strategy == "steps"
    assert config.env == {"TENSORBOARD_LOGGING_DIR": str(tmp_path / "logs")}
    assert len(config.notes) == 2
    assert config.reliability.overwrite_output_dir is True  # removed by transformers 5, our own key again


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    cfg = write(tmp_path, """
        model_name_or_path: m
        lora_rnak: 8
    """)
    with pytest.raises(DftuneError, match=r"config.yaml:3: unknown key 'lora_rnak'; did you mean 'lora_rank'"):
        parse_config([str(cfg)])
    with pytest.raises(DftuneError, match=r"command line: unknown key 'learnig_rate'; did you mean 'learning_rate'"):
        parse_config(["--learnig_rate", "1e-3"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learning_rate", "fast"], "key learning_rate: invalid float value"),
        (["--loss", "xyz"], "invalid choice"),
        (["--bf16", "true", "--fp16", "true", "--use_cpu", "true"], "fp16 and bf16"),
        (["--loss", "sft", "--dft_alpha", "0.5"], "contradicts"),
        (["--loss", "bft", "--dft_alpha", "0.5"], "contradicts"),
        (["--dft_alpha", "1.5"], r"dft_alpha must be in \[0, 1\]"),
        (["stray"], "config file not found"),
    ],
)
def test_bad_values_are_errors(argv, message):
    with pytest.raises(DftuneError, match=message):
        parse_config(argv)


def test_resolved_config_round_trips(tmp_path):
    config = parse_config(["--dft_alpha", "0.7", "--output_dir", str(tmp_path / "o"), "--max_steps", "7",
                           "--lora_target", "q_proj", "k_proj", "--data_files", "a.jsonl"])
    saved = write(tmp_path, config.to_yaml())
    again = parse_config([str(saved)])
    assert yaml.safe_load(again.to_yaml()) == yaml.safe_load(config.to_yaml())
    assert (again.method.loss, again.method.dft_alpha, again.training.max_steps) == ("dft", 0.7, 7)


def test_yaml_list_for_a_single_word_flag(tmp_path):
    cfg = write(tmp_path, """
        report_to: [tensorboard, wandb]
        data_files: [a.jsonl, b.jsonl]
    """)
    config = parse_config([str(cfg)])
    assert config.training.report_to == ["tensorboard", "wandb"]
    assert config.data.data_files == ["a.jsonl", "b.jsonl"]


def test_deepspeed_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    """Checked before TrainingArguments are built: transformers would fail half-way and leave global state."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(DftuneError, match=r"command line: deepspeed needs the deepspeed package: pip install"):
        parse_config(["--deepspeed", "configs/deepspeed/zero3.json"])


def test_fsdp_keys_reach_training_arguments(tmp_path):
    config = tmp_path / "fsdp.yaml"
    config.write_text(textwrap.dedent("""
        model_name_or_path: models/tiny
        data_files: [train.jsonl]
        fsdp: full_shard auto_wrap
        fsdp_config:
          transformer_layer_cls_to_wrap: [LlamaDecoderLayer]
          state_dict_type: SHARDED_STATE_DICT
    """), encoding="utf-8")
    training = parse_config([str(config)]).training
    assert training.fsdp is True
    assert training.fsdp_config["reshard_after_forward"] is True  # full_shard
    assert training.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert training.fsdp_config["state_dict_type"] == "SHARDED_STATE_DICT"
