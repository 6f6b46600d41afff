"""docs/lm_eval.md runs as printed: the blocks tests/docs cannot run (they need the lmeval extra) run here, in order,
in one fresh folder, and their results are the scores lm-eval wrote."""

from __future__ import annotations

import json

import pytest
from doc_blocks import ROOT, run_block, shell_blocks

PAGE = ROOT / "docs" / "lm_eval.md"
HERE = "tests/harness/test_lm_eval_docs.py runs this block"


@pytest.mark.slow
def test_the_lm_eval_page_runs_as_printed(tmp_path):
    blocks = [block for block in shell_blocks(PAGE) if block.not_run and HERE in block.not_run]
    assert len(blocks) == 3
    for block in blocks:
        run_block(block, tmp_path)
    lora = json.loads((tmp_path / "outputs/lm_eval/lora/lm_eval_results.json").read_text())["results"]
    dllm = json.loads((tmp_path / "outputs/lm_eval/dllm_scores.json").read_text())["results"]
    for scores in (lora, dllm):
        assert 0.0 <= scores["dftune_copy_mc"]["acc,none"] <= 1.0
        assert 0.0 <= scores["dftune_copy_gen"]["exact_match,none"] <= 1.0
    assert len(list((tmp_path / "outputs/lm_eval/results").rglob("results_*.json"))) == 1
