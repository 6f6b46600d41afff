"""The console of a run: one line per log entry with numbers as numbers, each evaluation printed once, a bar with
ETA unless `disable_tqdm`, and one summary (objective, steps, throughput, final eval CE, where the files are)."""

from __future__ import annotations

import json
import math
import os
import re
import sys

import processes
import pytest

from dftune.runtime.console import log_line, number


def test_numbers_read_as_numbers_at_a_fixed_width():
    assert number(4.54398) == "4.5440" and number(0.0123) == "0.0123" and number(12) == "12"
    assert number(0.0004) == "4.0e-04" and number(123456.7) == "1.2e+05" and number(0.0) == "0.0000"
    assert number(11045.0) == "11045" and number(1.0) == "1.0000"  # a count logged as a float; a whole loss
    assert number(math.nan) == "nan" and number(True) == "True"


def test_a_line_leads_with_the_loss_ce_and_p_and_ends_with_the_optimizer():
    logs = {"learning_rate": 4e-4, "grad_norm": 1.5, "dft_alpha": 0.7, "ce": 1.2, "loss": 0.81, "epoch": 0.5,
            "avg_p_correct": 0.41, "total_flos": 1e12, "num_input_tokens_seen": 99}  # fmt: skip
    line = log_line(logs, 20, 100)
    assert line == ("step  20/100  loss 0.8100  ce 1.2000  avg_p_correct 0.4100  dft_alpha 0.7000  lr 4.0e-04  "
                    "grad_norm 1.5000  epoch 0.5000")


def test_an_evaluation_line_drops_the_prefix_and_the_timings():
    logs = {"eval_loss": 0.9, "eval_ce": 1.3, "eval_runtime": 2.0, "eval_samples_per_second": 50.0, "epoch": 1.0}
    assert log_line(logs, 7, 10) == "eval  7/10  loss 0.9000  ce 1.3000"


def test_the_speed_entry_is_left_to_the_summary():
    assert log_line({"train_runtime": 3.0, "train_loss": 1.0, "train_samples_per_second": 2.0}, 10, 10) is None


def _train(tiny_model_dir, tmp_path, *flags):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i}+1?"},
                                                     {"role": "assistant", "content": str(i + 1)}]}) + "\n"
                            for i in range(32)), encoding="utf-8")  # fmt: skip
    argv = [sys.executable, "-m", "dftune", "train", "--model_name_or_path", str(tiny_model_dir),
            "--data_files", str(data), "--eval_files", str(data), "--loss", "dft", "--dft_alpha", "0.7",
            "--max_steps", "4", "--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
            "--per_device_train_batch_size", "8", "--save_strategy", "no", "--report_to", "none",
            "--output_dir", str(tmp_path / "out"), *flags]  # fmt: skip
    result = processes.run(argv, step=f"dftune train {' '.join(flags)}", timeout=600, capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("bar", [True, False], ids=["bar", "disable_tqdm"])
def test_a_run_prints_each_entry_once_and_one_summary(tiny_model_dir, tmp_path, bar):
    console = _train(tiny_model_dir, tmp_path, *([] if bar else ["--disable_tqdm", "true"]))
    assert "{'loss'" not in console and "'eval_loss'" not in console and "eval metrics" not in console
    assert console.count("step 2/4  loss ") == 1 and console.count("step 4/4  loss ") == 1
    assert console.count("eval 2/4  loss ") == 1
    assert console.count("eval 4/4  loss ") == 1, "the last step's evaluation must not run (and print) again"
    assert bool(re.search(r"\| 4/4 \[\d\d:\d\d<\d\d:\d\d", console)) == bar  # the training bar: elapsed<ETA
    assert console.count("---- dftune done") == 1
    summary = console.split("---- dftune done", 1)[1]
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    final_ce = [e["eval_ce"] for e in history if "eval_ce" in e][-1]
    assert f"final eval CE  {final_ce:.4f}" in summary
    for expected in ("stage sft, loss dft alpha=0.7", "target tokens/s", "samples/s", str(tmp_path / "out"),
                     "data_report.json", "dftune_config.yaml"):
        assert expected in summary, (expected, summary)
