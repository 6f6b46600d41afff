"""tools/study.py end to end on the tiny model: each (task, objective, seed) of a spec trained through `dftune compare`'s
functions, its JSON written with the numbers the report reads, the probe's verdict stored, the pages regenerated,
and a second call runs nothing (the study continues where it stopped)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from dftune.evaluation import wilson_interval
from tool_scripts import load_tool

ROOT = Path(__file__).parents[2]




def write_study(tmp_path: Path, model_dir: Path) -> Path:
    for name, numbers in (("train.jsonl", range(24)), ("heldout.jsonl", range(50, 54))):
        (tmp_path / name).write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": str(i + 1)},
        ]}) + "\n" for i in numbers), encoding="utf-8")  # fmt: skip
    (tmp_path / "train.yaml").write_text(textwrap.dedent("""
        loss: sft
        per_device_train_batch_size: 8
        max_steps: 2
        logging_steps: 1
        eval_strategy: steps
        eval_steps: 2
        save_strategy: steps
        save_steps: 2
        report_to: none
        use_cpu: true
        disable_tqdm: true
    """), encoding="utf-8")
    (tmp_path / "study.yaml").write_text(textwrap.dedent(f"""
        model: {model_dir}
        config: train.yaml
        runs_dir: docs/study/runs
        probe_dir: docs/study/probe
        seeds: [3]
        tasks:
          add: {{make: [missing.py], train: train.jsonl, heldout: heldout.jsonl, extractor: exact}}
        objectives:
          sft: {{loss: sft}}
          dft_alpha0.5: {{loss: dft, dft_alpha: 0.5}}
    """), encoding="utf-8")
    for page in ("docs/study/README.md", "README.md"):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / page, tmp_path / page)
    return tmp_path / "study.yaml"


@pytest.mark.slow
def test_the_study_writes_one_json_per_run_and_continues(tiny_model_dir, tmp_path, monkeypatch):
    study, report = load_tool("study"), load_tool("study_report")
    monkeypatch.chdir(tmp_path)  # the runner works in the spec's root (its main changes to the repository's)
    spec = report.load_spec(write_study(tmp_path, tiny_model_dir), root=tmp_path)
    assert study.study(spec, spec.plan(), force=False, stop_after_minutes=None) == 2
    for objective, loss in (("sft", "sft"), ("dft_alpha0.5", "dft")):
        record = json.loads(report.run_file(spec, "add", objective, 3).read_text(encoding="utf-8"))
        assert (record["task"], record["objective"], record["seed"], record["keys"]["loss"]) == ("add", objective, 3,
                                                                                               loss)  # fmt: skip
        assert (record["steps"], record["n_eval"], record["extractor"], record["resumed_from"]) == (2, 4, "exact", None)
        assert record["accuracy"] == record["correct"] / 4
        assert record["accuracy_interval"] == pytest.approx(wilson_interval(record["correct"], 4))
        assert record["final_eval_ce"] > 0 and record["cpu_s"] > 0
        assert record["command"] == f"python tools/study.py --only add/{objective}/3 --force"
        trained = tmp_path / "outputs" / "study" / "runs" / "add" / f"{objective}-seed3"
        assert (trained / "eval_results.jsonl").is_file()
    probe = json.loads(report.probe_file(spec, "add").read_text(encoding="utf-8"))
    assert probe["verdict"] and probe["samples"] == 24
    assert report.stale_pages(spec) == []
    assert "All 2 runs of the spec" in (tmp_path / "docs" / "study" / "README.md").read_text(encoding="utf-8")
    assert study.study(spec, spec.plan(), force=False, stop_after_minutes=None) == 0


@pytest.mark.slow
def test_a_run_continues_from_its_checkpoint_unless_forced(tiny_model_dir, tmp_path, monkeypatch):
    """train.yaml saves at step 2: a second run of the row resumes there (a run stopped by SIGTERM leaves such a
    checkpoint), and trains no further step; with `fresh` (`--force`) it starts again."""
    study, report = load_tool("study"), load_tool("study_report")
    monkeypatch.chdir(tmp_path)
    spec = report.load_spec(write_study(tmp_path, tiny_model_dir), root=tmp_path)
    assert study.run_one(spec, "add", "sft", 3)["resumed_from"] is None
    resumed = study.run_one(spec, "add", "sft", 3)
    assert (resumed["resumed_from"], resumed["steps"]) == ("checkpoint-2", 2)
    assert study.run_one(spec, "add", "sft", 3, fresh=True)["resumed_from"] is None
