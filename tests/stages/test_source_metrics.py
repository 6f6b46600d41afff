"""ce/<source>: with several data sources, the CE of each source's targets over the logging window and eval set.

The collator carries each sample's `source_id` per position (padded and packed), the trainer pops it before the model
call, and `runtime.metrics.source_sums` adds (sum of CE, count) per source to the metric window.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dftune.cli.main import main
from dftune.data.collate import DataCollatorForChat
from dftune.losses import compute_objective
from dftune.runtime.metrics import source_sums


def features() -> list[dict]:
    return [
        {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "source_id": 0},
        {"input_ids": [5, 9], "labels": [-100, 9], "source_id": 1},
        {"input_ids": [5, 6, 4], "labels": [-100, 6, 4], "source_id": 1},
    ]


@pytest.mark.parametrize("packing", [False, True])
def test_source_ids_follow_each_sample(packing):
    batch = DataCollatorForChat(pad_token_id=0, packing=packing)(features())
    ids, labels = batch["source_ids"], batch["labels"]
    assert ids.shape == labels.shape
    # Every labelled position carries its sample's source; padding is -1.
    per_source = {s: int(((ids == s) & (labels != -100)).sum()) for s in (0, 1)}
    assert per_source == {0: 2, 1: 3}
    if not packing:
        assert ids.tolist() == [[0, 0, 0, 0], [1, 1, -1, -1], [1, 1, 1, -1]]


def test_source_sums_equal_the_naive_per_source_mean():
    """sum over a source's targets of -log p(target) and their count, from the objective's target_ce/target_index."""
    torch.manual_seed(0)
    batch = DataCollatorForChat(pad_token_id=0)(features())
    logits = torch.randn(*batch["labels"].shape, 11, dtype=torch.float64)
    out = compute_objective("sft", logits, batch["labels"])
    sums = {name: (s, c) for name, s, c in source_sums(out, batch["source_ids"], ["a", "b"])}
    targets, sources = batch["labels"][:, 1:], batch["source_ids"][:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="none", ignore_index=-100)
    for s, name in enumerate(["a", "b"]):
        mask = ((sources == s) & (targets != -100)).flatten()
        assert sums[f"ce/{name}"][1] == mask.sum().item()
        assert sums[f"ce/{name}"][0] == pytest.approx(ce[mask].sum().item(), rel=1e-12)


def write_source(path, word: str, n: int) -> str:
    lines = [json.dumps({"messages": [{"role": "user", "content": f"{word} {i}"},
                                      {"role": "assistant", "content": word * (1 + i % 3)}]}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_training_logs_ce_per_source(tiny_model_dir, tmp_path):
    """Two files (same stem in two folders: names made unique), train and eval; remove_unused_columns left at its
    default, so transformers' column removal must keep source_id (its private hook moving fails here)."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    files = [write_source(tmp_path / "x" / "chat.jsonl", "ab", 12),
             write_source(tmp_path / "y" / "chat.jsonl", "z", 12)]
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--data_files", *files, "--eval_files", *files,
            "--max_length", "64", "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
            "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "no", "--report_to", "none",
            "--output_dir", str(out), "--dataset_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train = [e for e in log if "loss" in e and "train_runtime" not in e]
    assert train and all({"ce/chat", "ce/chat-2"} <= set(e) for e in train)
    for e in train:  # the overall CE is the token-weighted mean of the two
        low, high = sorted((e["ce/chat"], e["ce/chat-2"]))
        assert low - 1e-9 <= e["ce"] <= high + 1e-9
    evals = [e for e in log if "eval_loss" in e]
    assert evals and {"eval_ce/chat", "eval_ce/chat-2"} <= set(evals[-1])


def test_plots_get_a_panel_per_source():
    from dftune.viz.curves import RUN_PANELS, source_panels

    history = [{"step": 1, "loss": 1.0, "ce/b": 1.0, "ce/a": 2.0, "eval_ce/a": 2.0}]
    assert source_panels({"run": history}, RUN_PANELS) == [("ce/a", "cross-entropy of a"), ("ce/b", "cross-entropy of b")]
