"""One set of decoding keys (`DecodingArguments`) for `dftune generate`, `dftune eval` and stage dllm's evaluation
samples: each takes the new keys (margin, entropy, min_new_tokens, cfg_scale, threshold) and they reach decode."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

import pytest
from transformers import TrainerControl, TrainerState

from dftune.cli.main import build_parser, main
from dftune.config.decoding_args import DecodingArguments
from dftune.models.presets import init_model
from dftune.run import parse_config
from dftune.stages.dllm import DllmArguments, build_trainer
from dftune.stages.dllm_samples import SAMPLES_FILE, EvalSamples

KEYS = [f.name for f in fields(DecodingArguments)]


@pytest.fixture(scope="module")
def dllm_dir(tmp_path_factory):
    return init_model("tiny-dllm", tmp_path_factory.mktemp("tiny-dllm"))


def subcommand(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_generate_and_eval_flags_are_the_dataclass_fields(command):
    """Every key once, with the dataclass's default: the flags are made from it, not written again."""
    options = {a.dest: a for a in subcommand(command)._actions}
    for f in fields(DecodingArguments):
        assert options[f.name].default == f.default, f.name
    assert options["remasking"].choices == ["low_confidence", "random", "margin", "entropy"]
    assert {f.name for f in fields(DllmArguments)} >= set(KEYS)  # stage dllm's keys include them


def records(path, words=("ab", "cd", "ba", "dc")) -> str:
    rows = [{"messages": [{"role": "user", "content": f"copy {w}"}, {"role": "assistant", "content": w}]}
            for w in words]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("flags", [
    ["--remasking", "margin", "--min_new_tokens", "4", "--cfg_scale", "0.5", "--steps", "2", "--block_length", "2"],
    ["--remasking", "entropy", "--threshold", "2.0", "--temperature", "0.5"],
    ["--remasking", "random", "--steps", "2"],
])  # fmt: skip
def test_generate_and_eval_take_the_new_keys(dllm_dir, tmp_path, capsys, flags):
    assert main(["generate", "--model", str(dllm_dir), "--prompt", "copy ab", "--max_new_tokens", "4", *flags]) == 0
    assert "<|mask|>" not in capsys.readouterr().out
    out = tmp_path / "results.jsonl"
    assert main(["eval", "--model", str(dllm_dir), "--data", records(tmp_path / "d.jsonl"), "--max_new_tokens", "4",
                 "--output", str(out), *flags]) == 0  # fmt: skip
    assert len(out.read_text().splitlines()) == 4


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_contradicting_keys_stop_both_commands_before_a_model_loads(tmp_path, capsys, command):
    target = ["--prompt", "x"] if command == "generate" else ["--data", records(tmp_path / "d.jsonl")]
    code = main([command, "--model", str(tmp_path / "absent"), *target, "--remasking", "random", "--threshold", "0.5"])
    assert code == 2 and "random remasking has none" in capsys.readouterr().err


def test_a_causal_model_refuses_diffusion_only_keys(tiny_model_dir, capsys):
    code = main(["generate", "--model", str(tiny_model_dir), "--prompt", "x", "--remasking", "margin"])
    assert code == 2 and "--remasking: only a masked-diffusion model uses these" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "x", "--max_new_tokens", "3",
                 "--min_new_tokens", "3"]) == 0  # fmt: skip  # HF generate's own key


def test_training_samples_decode_with_the_parsed_keys(dllm_dir, tmp_path):
    """The keys in a stage dllm config reach its eval samples' decode: the rows' step count is the 4 fixed steps
    (EOS, held back by min_new_tokens, never ends a row early)."""
    out = tmp_path / "out"
    config = parse_config(["--model_name_or_path", str(dllm_dir), "--stage", "dllm",
                           "--data_files", records(tmp_path / "d.jsonl", ("ab", "cd", "ba", "dc") * 2),
                           "--validation_split_percentage", "50", "--output_dir", str(out), "--use_cpu", "true",
                           "--report_to", "none", "--max_new_tokens", "6", "--steps", "4", "--block_length", "3",
                           "--remasking", "margin", "--min_new_tokens", "6", "--cfg_scale", "1.0"])  # fmt: skip
    expected = DecodingArguments(max_new_tokens=6, steps=4, block_length=3, remasking="margin", min_new_tokens=6,
                                 cfg_scale=1.0)  # fmt: skip
    assert config.stage_args.decoding() == expected
    trainer = build_trainer(config, [])
    samples = next(c for c in trainer.callback_handler.callbacks if isinstance(c, EvalSamples))
    assert samples.options == expected
    out.mkdir(parents=True, exist_ok=True)
    samples.on_evaluate(trainer.args, TrainerState(global_step=1), TrainerControl())
    rows = [json.loads(line) for line in (out / SAMPLES_FILE).read_text().splitlines()]
    assert rows and all(r["decode_steps"] == 4 and "<|mask|>" not in r["sample"] for r in rows)
