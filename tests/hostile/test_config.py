"""Config mistakes: a key given twice, a key with no value, numbers that make no sense, contradictions. Each is
an error at parse time (exit 2, before any model loads) naming the file:line (or the command line) and the fix."""

from __future__ import annotations

import pytest

from .conftest import clean_error, dftune

BASE = "model_name_or_path: {model}\ndata_files: [{data}]\noutput_dir: {out}\nreport_to: none\nuse_cpu: true\n"

# (case, lines added after BASE (line 6 on), extra flags, fragments the message must hold)
CASES = [
    ("key twice", "learning_rate: 1e-4\nmax_steps: 3\nlearning_rate: 1e-3\n", [],
     [":8: key learning_rate is given twice (lines 6 and 8)", "keep one"]),
    ("base key twice", "model_name_or_path: other\n", [], [":6: key model_name_or_path is given twice (lines 1 and 6)"]),
    ("max_steps empty", "max_steps:\n", [], [":6: key max_steps has no value", "delete the line"]),
    ("learning_rate empty", "learning_rate:   # to do\n", [], [":6: key learning_rate has no value"]),
    ("max_steps negative", "max_steps: -5\n", [], [":6:", "max_steps must be a positive number", "got -5"]),
    ("max_steps zero", "max_steps: 0\n", [], [":6:", "max_steps must be a positive number", "-1 to train"]),
    ("epochs zero", "num_train_epochs: 0\n", [], [":6:", "num_train_epochs 0.0 with no max_steps would train zero steps"]),
    ("epochs negative", "num_train_epochs: -2\n", [], [":6:", "would train zero steps"]),
    ("learning_rate a word", "learning_rate: fast\n", [], [":6: key learning_rate: invalid float value: 'fast'"]),
    ("learning_rate negative", "learning_rate: -0.1\n", [], [":6:", "learning_rate must be 0 or more"]),
    ("batch size zero", "per_device_train_batch_size: 0\n", [], [":6:", "per_device_train_batch_size must be 1 or more"]),
    ("accumulation zero", "gradient_accumulation_steps: 0\n", [], [":6:", "gradient_accumulation_steps must be 1"]),
    ("max_length one", "max_length: 1\n", [], [":6:", "max_length must be 2 or more"]),
    ("max_steps a word", "max_steps: many\n", [], [":6: key max_steps: invalid int value: 'many'"]),
    ("flag max_steps negative", "", ["--max_steps", "-3"], ["command line:", "max_steps must be a positive number"]),
    ("flag learning_rate word", "", ["--learning_rate", "fast"], ["command line: key learning_rate: invalid float"]),
    ("overwrite with resume path", "overwrite_output_dir: true\nresume_from_checkpoint: {out}/checkpoint-4\n", [],
     [":6:", "overwrite_output_dir: true removes the checkpoints", "drop one of the two"]),
    ("overwrite with resume true", "overwrite_output_dir: true\nresume_from_checkpoint: 'true'\n", [],
     ["overwrite_output_dir: true removes the checkpoints"]),
    ("not a mapping", None, [], ["the config must be a mapping of key: value, got list"]),
    ("not UTF-8", b"\xff\xfe" + "max_steps: 3\n".encode("utf-16-le"), [], ["not UTF-8 text", "save the config as UTF-8"]),
]  # fmt: skip


@pytest.mark.parametrize("case, lines, flags, fragments", CASES, ids=[c[0] for c in CASES])
def test_config_mistake_is_a_located_error(case, lines, flags, fragments, tiny_model_dir, tmp_path, capsys,
                                           heavy_work):
    data, out = tmp_path / "chat.jsonl", tmp_path / "out"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    config = tmp_path / "run.yaml"
    if lines is None:
        config.write_text("- model_name_or_path: x\n")
    elif isinstance(lines, bytes):
        config.write_bytes(lines)
    else:
        config.write_text((BASE + lines).format(model=tiny_model_dir, data=data, out=out))
    outcome = dftune(capsys, "train", config, *flags)
    clean_error(outcome, 2, *(f.replace("{out}", str(out)) for f in fragments))
    if lines is not None and not isinstance(lines, bytes) and ":" in fragments[0][:3]:
        assert str(config) in outcome.err  # the file, with the line
    assert not out.exists() and not heavy_work, heavy_work  # nothing written, no model loaded, nothing tokenised
