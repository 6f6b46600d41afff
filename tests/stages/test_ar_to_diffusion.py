"""AR-to-diffusion (Dream-style): `dftune init-model --diffusion` turns a causal LM into a bidirectional masked-diffusion
LM with a mask token whose position i - 1 predicts token i; stage dllm trains it (full and LoRA) and samples it."""

from __future__ import annotations

import json

import pytest
import torch
from test_dllm_end_to_end import write_records
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main
from dftune.models.diffusion_conversion import to_diffusion
from dftune.run import parse_config, run


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    path = tmp_path_factory.mktemp("ar2d") / "model"
    assert main(["init-model", "--preset", "tiny-llama", "--output_dir", str(path), "--diffusion"]) == 0
    return path


def test_conversion_makes_a_bidirectional_model_with_a_mask_token(converted):
    config = json.loads((converted / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert config["is_causal"] is False and config["diffusion_shift_logits"] is True
    assert config["mask_token_id"] == tokenizer.mask_token_id == len(tokenizer) - 1 == config["vocab_size"] - 1
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float64).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    changed = ids.clone()
    changed[0, 3] = 9
    with torch.no_grad():  # bidirectional: a later token changes the logits of the first position
        assert not torch.allclose(model(input_ids=ids).logits[0, 0], model(input_ids=changed).logits[0, 0])
    # init-model again into the folder is refused (it would replace the model), and the conversion is idempotent
    assert main(["init-model", "--preset", "tiny-llama", "--output_dir", str(converted), "--diffusion"]) == 2
    to_diffusion(converted)
    assert json.loads((converted / "config.json").read_text())["vocab_size"] == config["vocab_size"]


@pytest.mark.slow
@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_stage_dllm_trains_it_shifted_and_it_samples(converted, tmp_path, capsys, finetuning_type):
    out = tmp_path / "out"
    data = write_records(tmp_path / "train.json", 8)
    config = parse_config(["--model_name_or_path", str(converted), "--stage", "dllm", "--data_files", data,
                           "--finetuning_type", finetuning_type, "--max_steps", "2", "--per_device_train_batch_size",
                           "4", "--learning_rate", "1e-3", "--output_dir", str(out), "--use_cpu", "true",
                           "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1"])  # fmt: skip
    trainer = run(config)
    assert trainer.shift_logits is True  # from the converted model's config
    assert trainer.fused_head is not None  # the fused head, shifted, over the masked positions
    logs = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    assert len(logs) == 2 and all(e["loss"] > 0 for e in logs)
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "copy abc", "--max_new_tokens", "4",
                 "--threshold", "0.9"]) == 0  # fmt: skip
    assert "<|mask|>" not in capsys.readouterr().out


def test_threshold_with_fixed_steps_is_a_clear_error(converted, capsys):
    code = main(["generate", "--model", str(converted), "--prompt", "x", "--threshold", "0.9", "--steps", "4"])
    assert code == 2 and "give --threshold or --steps, not both" in capsys.readouterr().err


def test_the_smollm2_example_config_parses():
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "diffusion" / "ar2d_reverse.yaml"
    config = parse_config([str(path)])
    assert config.method.stage == "dllm" and config.model.model_name_or_path == "outputs/smollm2-diffusion"
    assert config.stage_args.diffusion_shift_logits is None  # from the converted model's config
