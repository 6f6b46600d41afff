"""docs/lm_eval.md runs as printed: the blocks tests/docs cannot run (they need the lmeval extra) run here, in order,
in one fresh folder, and their results are the scores lm-eval wrote."""

from __future__ import annotations

import json

import pytest
from doc_blocks import ROOT, run_block, shell_blocks

from dftune.harness.run import run_lm_eval

PAGE = ROOT / "docs" / "lm_eval.md"
HERE = "tests/harness/test_lm_eval_docs.py runs this block"


@pytest.mark.slow
def test_the_lm_eval_page_runs_as_printed(tmp_path, monkeypatch):
    """Its scores are what `run_lm_eval` gives in process for the same folders and flags."""
    blocks = [block for block in shell_blocks(PAGE) if block.not_run and HERE in block.not_run]
    assert len(blocks) == 3
    for block in blocks:
        run_block(block, tmp_path)
    lora = json.loads((tmp_path / "outputs/lm_eval/lora/lm_eval_results.json").read_text())["results"]
    dllm = json.loads((tmp_path / "outputs/lm_eval/dllm_scores.json").read_text())["results"]
    monkeypatch.chdir(tmp_path)  # the tasks' data paths are relative to the repository root, linked here
    tasks = ["dftune_copy_mc", "dftune_copy_gen"]
    for scores, folder, model_args in ((lora, "lora", {}), (dllm, "dllm", {"steps": 2})):
        direct = run_lm_eval(f"outputs/lm_eval/{folder}", None, tasks, include_path="examples/lm_eval",
                             batch_size=32, model_args=model_args)["results"]
        for task, metric in zip(tasks, ("acc,none", "exact_match,none")):
            assert scores[task][metric] == direct[task][metric], (folder, task)
    assert len(list((tmp_path / "outputs/lm_eval/results").rglob("results_*.json"))) == 1
