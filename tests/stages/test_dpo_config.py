"""Stage dpo keys: the examples parse, contradictions are errors before any model loads, DPOConfig is ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dftune.data.lengths import PreferenceLimits
from dftune.data.preference import collect_preferences
from dftune.errors import DftuneError
from dftune.models.loading import load_tokenizer, quantization_config
from dftune.run import parse_config
from dftune.stages.dpo import dpo_config

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "dpo").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_dpo_example_parses(path):
    # The 72B examples ask for bf16 on GPUs; use_cpu lets TrainingArguments accept bf16 on this CPU machine.
    config = parse_config([str(path), "--use_cpu", "true"])
    assert config.method.stage == "dpo" and config.stage_args.loss_type == ["sigmoid"]
    dpo = dpo_config(config)
    assert (dpo.beta, dpo.max_length, dpo.bf16) == (config.stage_args.beta, config.data.max_length, config.training.bf16)
    assert dpo.learning_rate == config.training.learning_rate  # ours, not TRL's 1e-6 default


def test_the_seed_004_examples_are_there():
    names = {path.name for path in EXAMPLES}
    assert {"qwen72b_qlora_zero3.yaml", "qwen72b_qlora_fsdp.yaml", "tiny_dpo.yaml"} <= names


def test_dpo_config_keeps_training_arguments_off_trl_defaults(tmp_path):
    """TRL defaults bf16 and gradient checkpointing on; a CPU run must get the user's (default: off) values."""
    config = parse_config(["--stage", "dpo", "--output_dir", str(tmp_path), "--use_cpu", "true",
                           "--beta", "0.3", "--loss_type", "sigmoid,sft", "--max_length", "77"])  # fmt: skip
    dpo = dpo_config(config)
    assert dpo.bf16 is False and dpo.gradient_checkpointing is False and dpo.logging_steps == 500
    assert (dpo.beta, dpo.loss_type, dpo.max_length) == (0.3, ["sigmoid", "sft"], 77)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--adapter_name_or_path", "a"], "apply to stage: dpo only"),
        (["--stage", "dpo", "--loss", "dft"], "loss_type"),
        (["--stage", "dpo", "--beta", "0"], "beta must be above 0"),
        (["--stage", "dpo", "--adapter_name_or_path", "a"], "finetuning_type: lora"),
        (["--stage", "dpo", "--max_prompt_length", "0"], "max_prompt_length"),
        (["--quantization_bit", "3"], "quantization_bit must be 4 or 8"),
    ],
)
def test_contradictions_are_errors(flags, message):
    with pytest.raises(DftuneError, match=message):
        parse_config(flags)


def test_quantization_fails_clearly_before_loading_here():
    """No bitsandbytes or no CUDA on this machine: a DftuneError that says which, never a load attempt."""
    config = parse_config(["--stage", "dpo", "--finetuning_type", "lora", "--quantization_bit", "4"])
    with pytest.raises(DftuneError, match="bitsandbytes|CUDA"):
        quantization_config(config.model)


def test_prompt_that_fills_max_length_is_cut_not_rejected(tiny_model_dir, tmp_path):
    """A prompt longer than max_length keeps its end (and the generation header); the pair is counted as cut."""
    data = tmp_path / "long.jsonl"
    records = [{"prompt": "x" * 200, "chosen": "yes", "rejected": "no"}, {"prompt": "Hi", "chosen": "a", "rejected": "b"}]
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(parse_config(["--model_name_or_path", str(tiny_model_dir)]).model)
    kept, report = collect_preferences([str(data)], tokenizer, PreferenceLimits(64))
    assert len(kept) == 2 and report.rejected == 0
    long, short = kept
    assert len(long["prompt_ids"]) + len(long["chosen_ids"]) <= 64
    assert tokenizer.decode(long["prompt_ids"]).endswith("xxx<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(long["chosen_ids"]) == "yes<|im_end|>\n"
    assert tokenizer.decode(short["prompt_ids"]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    whole = tokenizer.apply_chat_template([{"role": "user", "content": "x" * 200}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]  # fmt: skip
    assert report.over_length() == {"long": {"over_length": 1, "split": 0, "samples": 1,
                                             "tokens_cut": len(whole) - len(long["prompt_ids"]), "chars_clipped": 0}}

def test_the_run_header_names_dpos_own_loss(tmp_path):
    """Stage dpo trains TRL's loss_type, not `loss` (which stays sft): the header says loss_type and beta."""
    config = parse_config([str(EXAMPLES[0]), "--use_cpu", "true", "--loss_type", "sigmoid,ipo", "--beta", "0.2"])
    assert config.stage_args.own_objective() == "stage dpo, loss_type sigmoid,ipo beta=0.2"
