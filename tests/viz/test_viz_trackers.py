"""report_to tensorboard, wandb and swanlab, offline: the objective's metrics arrive under stable names."""

from __future__ import annotations

import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dftune.cli.main import main


def write_data(path, n: int) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            messages = [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": str(i + 1)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return str(path)


@pytest.mark.slow
def test_trackers_offline(tiny_model_dir, tmp_path, monkeypatch):
    # TENSORBOARD_LOGGING_DIR: an earlier test's --logging_dir leaves it in os.environ (apply_env).
    for name in ("WANDB_MODE", "WANDB_API_KEY", "SWANLAB_MODE", "SWANLAB_API_KEY", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(name, raising=False)  # also undoes the WANDB_MODE the run sets
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key: the offline default applies
    out = tmp_path / "run"
    argv = [
        "train", "--model_name_or_path", str(tiny_model_dir), "--data_files", write_data(tmp_path / "t.jsonl", 24),
        "--eval_files", write_data(tmp_path / "e.jsonl", 6), "--loss", "dft", "--max_steps", "3",
        "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "3", "--per_device_train_batch_size", "8",
        "--report_to", "tensorboard,wandb,swanlab", "--save_strategy", "no", "--use_cpu", "true",
        "--disable_tqdm", "true", "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert os.environ["WANDB_MODE"] == "offline"

    (event_dir,) = (out / "runs").iterdir()
    scalars = EventAccumulator(str(event_dir)).Reload().Tags()["scalars"]
    assert {"train/avg_p_correct", "train/ce", "train/loss", "train/dft_alpha", "eval/avg_p_correct"} <= set(scalars)
    assert not [tag for tag in scalars if tag.startswith("train/train/")]
    points = EventAccumulator(str(event_dir)).Reload().Scalars("train/avg_p_correct")
    assert [p.step for p in points] == [1, 2, 3] and all(0 < p.value < 1 for p in points)

    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert list((out / "swanlog").glob("run-*"))
