"""Stage dllm on masked LMs as they come: each family's own tokenizer conventions (no EOS, [SEP], no chat
template), full and LoRA training, `dftune generate` with fixed steps and with a confidence threshold."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from masked_lm_families import BERT_SPECIALS, FAMILIES, build_masked_lm, wordpiece
from test_dllm_end_to_end import write_records

from dftune.cli.main import main
from dftune.data.encode import PLAIN_TEMPLATE


def train(model_dir, tmp_path, out, *extra: str) -> int:
    data = write_records(tmp_path / "train.json", 8)
    return main(["train", "--stage", "dllm", "--model_name_or_path", str(model_dir), "--data_files", data,
                 "--output_dir", str(out), "--max_length", "48", "--max_steps", "2", "--per_device_train_batch_size",
                 "4", "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
                 *extra])  # fmt: skip


def generate(model_dir, capsys, *extra: str) -> str:
    capsys.readouterr()
    assert main(["generate", "--model", str(model_dir), "--prompt", "copy abcd", "--max_new_tokens", "8", *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_masked_lm_family_trains_full_and_lora_and_generates(model_type, tmp_path, capsys):
    model_dir = build_masked_lm(model_type, tmp_path / "base")
    own = AutoTokenizer.from_pretrained(model_dir)
    assert own.chat_template is None and own.mask_token is not None
    end = own.eos_token or own.sep_token

    out = tmp_path / "full"
    assert train(model_dir, tmp_path, out) == 0
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == PLAIN_TEMPLATE and saved.eos_token == end  # a BERT's [SEP] is its EOS now
    assert saved.pad_token_id == own.pad_token_id
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert logs and all(e["loss"] > 0 for e in logs)
    for flags in (["--steps", "4", "--block_length", "4"], ["--threshold", "0.5"]):
        reply = generate(out, capsys, *flags)
        assert reply.endswith("\n") and own.mask_token not in reply and end not in reply

    lora = tmp_path / "lora"
    assert train(model_dir, tmp_path, lora, "--finetuning_type", "lora", "--lora_target", "all") == 0
    assert (lora / "adapter_config.json").is_file()
    for flags in (["--steps", "2"], ["--threshold", "0.9"]):
        assert own.mask_token not in generate(lora, capsys, *flags)


def test_tokenizer_with_neither_eos_nor_sep_is_a_clear_error(tmp_path, capsys):
    """A masked LM whose tokenizer marks no end at all: the error names the tokenizer and the fix, no traceback."""
    model_dir = build_masked_lm("bert", tmp_path / "base")
    specials = {name: token for name, token in BERT_SPECIALS.items() if name != "sep_token"}
    PreTrainedTokenizerFast(tokenizer_object=wordpiece(BERT_SPECIALS), **specials).save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).sep_token is None
    assert train(model_dir, tmp_path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no EOS token and no SEP token" in err and str(model_dir) in err and "eos_token" in err
    assert "Traceback" not in err
