"""Bad numbers: a NaN, an infinity or an out-of-range value in any number key is an error at parse time (exit 2,
`file:line`, before a model loads); an update that makes a weight non-finite stops the run at that step with
nothing of it saved (exit 1); a tokenizer larger than the model's embedding table is an error before step 1."""

from __future__ import annotations

import json
import time
import typing
from dataclasses import fields
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from dftune.config.number_keys import is_number_type
from dftune.config.parse import sections
from dftune.errors import DftuneError
from dftune.run import parse_config
from dftune.stages import stage_sections
from dftune.runtime.checkpoints import COMPLETE_MARKER

from .conftest import clean_error, copy_model, dftune, hashes, train_argv

BASE = "model_name_or_path: {model}\ndata_files: [{data}]\noutput_dir: {out}\nreport_to: none\nuse_cpu: true\n"

# (case, YAML lines from line 6 on, the bad key last, fragments of the message); the cases first
CASES = [
    ("learning_rate inf", "learning_rate: .inf\n", ["learning_rate must be a finite number, 0 or more, got inf"]),
    ("learning_rate nan", "learning_rate: .nan\n", ["learning_rate must be a finite number, 0 or more, got nan"]),
    ("learning_rate 'nan' text", "learning_rate: nan\n", ["learning_rate must be a finite number"]),
    ("weight_decay nan", "weight_decay: .nan\n", ["weight_decay must be a finite number, 0 or more"]),
    ("weight_decay negative", "weight_decay: -0.1\n", ["weight_decay must be 0 or more, got -0.1"]),
    ("max_grad_norm nan", "max_grad_norm: .nan\n", ["max_grad_norm must be a finite number, 0 or more"]),
    ("max_grad_norm negative", "max_grad_norm: -1\n", ["max_grad_norm must be 0 or more, got -1"]),
    ("bft_gamma negative", "loss: bft\nbft_gamma: -1\n", ["bft_gamma must be above 0, got -1"]),
    ("bft_gamma zero", "loss: bft\nbft_gamma: 0\n", ["bft_gamma must be above 0, got 0"]),
    ("seed -1", "seed: -1\n", ["seed must be in [0, 4294967295], got -1"]),
    ("data_seed too large", "data_seed: 4294967296\n", ["data_seed must be in [0, 4294967295]"]),
    ("adam_beta2 one", "adam_beta2: 1.0\n", ["adam_beta2 must be in [0, 1), got 1.0"]),
    ("adam_epsilon inf", "adam_epsilon: .inf\n", ["adam_epsilon must be a finite number"]),
    ("warmup_steps nan", "warmup_steps: .nan\n", ["warmup_steps must be a finite number"]),
    ("logging_steps inf", "logging_steps: .inf\n", ["logging_steps must be a finite number"]),  # was OverflowError
    ("label_smoothing above 1", "label_smoothing_factor: 1.5\n", ["label_smoothing_factor must be in [0, 1]"]),
    ("dft_alpha nan", "dft_alpha: .nan\n", ["dft_alpha must be a finite number, in [0, 1], got nan"]),
    ("dft_power inf", "dft_power: .inf\n", ["dft_power must be a finite number, 0 or more"]),
    ("iw_sft_max_weight inf", "loss: iw_sft\niw_sft_max_weight: .inf\n", ["iw_sft_max_weight must be a finite"]),
    ("psft_eps_high nan", "loss: psft\npsft_eps_high: .nan\n", ["psft_eps_high must be a finite number"]),
    ("eaft_alpha -inf", "eaft_alpha: -.inf\n", ["eaft_alpha must be a finite number, 0 or more, got -inf"]),
    ("diffusion_eps nan", "stage: dllm\ndiffusion_eps: .nan\n", ["diffusion_eps must be a finite number, in (0, 1)"]),
    ("dpo beta inf", "stage: dpo\nbeta: .inf\n", ["beta must be a finite number, above 0"]),
    ("reply_share one", "reply_share: 1\n", ["reply_share must be in (0, 1), got 1"]),
    ("lora_rank zero", "finetuning_type: lora\nlora_rank: 0\n", ["lora_rank must be 1 or more, got 0"]),
    ("lora_dropout one", "lora_dropout: 1\n", ["lora_dropout must be in [0, 1), got 1"]),
    ("max_nonfinite_steps negative", "max_nonfinite_steps: -1\n", ["max_nonfinite_steps must be 0 or more"]),
]  # fmt: skip


@pytest.mark.parametrize("case, lines, fragments", CASES, ids=[c[0] for c in CASES])
def test_a_bad_number_is_an_error_at_parse_time(case, lines, fragments, tiny_model_dir, tmp_path, capsys):
    data, out, config = tmp_path / "chat.jsonl", tmp_path / "out", tmp_path / "run.yaml"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    config.write_text((BASE + lines).format(model=tiny_model_dir, data=data, out=out))
    started = time.monotonic()
    outcome = dftune(capsys, "train", config)
    clean_error(outcome, 2, f"{config}:{5 + lines.count(chr(10))}: invalid configuration", *fragments)  # its line
    assert not out.exists() and time.monotonic() - started < 10  # nothing written, no model loaded


def _number_keys() -> list[str]:
    """Every key of `dftune train` whose value is a number: TrainingArguments', ours, every stage's, every
    objective setting's."""
    keys = []
    for section in sections(stage_sections()):
        hints = typing.get_type_hints(section)
        keys += [f.name for f in fields(section) if f.init and is_number_type(hints[f.name])]
    return sorted(set(keys))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_number_key_refuses_a_non_finite_value(value):
    """The invariant behind the cases above, for every number key there is (a key added later included)."""
    keys = _number_keys()
    assert {"learning_rate", "weight_decay", "max_grad_norm", "bft_gamma", "dft_alpha", "diffusion_eps", "beta",
            "seed"} <= set(keys)  # fmt: skip
    for key in keys:
        with pytest.raises(DftuneError) as error:
            parse_config([f"--{key}", value, "--output_dir", "unused", "--use_cpu", "true"])
        assert f"command line: invalid configuration: {key} must be a finite number" in str(error.value), key
        assert f"got {value}" in str(error.value), key


def test_an_update_that_makes_weights_non_finite_stops_the_run_at_that_step(tiny_model_dir, data_file, tmp_path,
                                                                               capsys):
    """Warm-up gives step 1 a learning rate of 0 (a finite checkpoint-1); step 2's 1e39 overflows float32: the run
    stops at step 2 with exit 1 and saves nothing of it (no checkpoint-2, no final model)."""
    out = tmp_path / "out"
    before = hashes(data_file, tiny_model_dir)
    argv = train_argv(tiny_model_dir, data_file, out, "--learning_rate", "1e39", "--warmup_steps", "1",
                      "--save_steps", "1", "--lr_scheduler_type", "constant_with_warmup", steps=4)
    outcome = dftune(capsys, *argv)
    clean_error(outcome, 1, "stopped at step 2: its update made the weight", "non-finite (NaN or inf)",
                "learning_rate 1e+39", f"The last complete checkpoint, {out / 'checkpoint-1'}, is kept",
                "Lower learning_rate")
    assert (out / "checkpoint-1" / COMPLETE_MARKER).is_file() and not (out / "checkpoint-2").exists()
    assert not (out / "model.safetensors").exists()
    assert all(bool(t.isfinite().all()) for t in load_file(out / "checkpoint-1" / "model.safetensors").values())
    assert hashes(data_file, tiny_model_dir) == before


def _oversized_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, int, int]:
    model = copy_model(tiny_model_dir, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = json.loads((model / "config.json").read_text())["vocab_size"]
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(rows - len(tokenizer) + 3)])
    tokenizer.save_pretrained(model)
    assert len(tokenizer) == rows + 3
    return model, rows, len(tokenizer)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_tokenizer_larger_than_the_vocabulary_is_named_before_step_1(command, tiny_model_dir, data_file, tmp_path,
                                                                        capsys):
    model, rows, size = _oversized_tokenizer(tiny_model_dir, tmp_path)
    out = tmp_path / "out"
    argv = train_argv(model, data_file, out) if command == "train" else \
        ["eval", "--model", model, "--data", data_file, "--output", tmp_path / "eval.jsonl"]
    before = hashes(data_file, model)
    clean_error(dftune(capsys, *argv), 2, f"{model}: the tokenizer has {size} tokens but the model's embedding "
                f"table has {rows} rows", f"model.resize_token_embeddings({size})")
    assert not (out / "model.safetensors").exists() and not (tmp_path / "eval.jsonl").exists()
    assert hashes(data_file, model) == before
