"""docs/study/README.md's tables and README.md's study section are tools/study_report.py's output from the JSON files
in docs/study/runs/ and probe/: a run added, changed or removed fails here until `make study` (or
`python tools/study_report.py`) has regenerated them. The aggregation is checked on a small study built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dftune.errors import DftuneError
from dftune.evaluation import wilson_interval
from tool_scripts import load_tool

ROOT = Path(__file__).parents[2]




@pytest.fixture(scope="module")
def report():
    return load_tool("study_report")


def test_pages_match_the_json_files(report):
    assert report.stale_pages(report.load_spec()) == [], "run `make study` or `python tools/study_report.py`"


SPEC = """model: outputs/smollm2
config: examples/study/train.yaml
runs_dir: docs/study/runs
probe_dir: docs/study/probe
seeds: [0, 1]
tasks:
  math: {make: [m.py], train: t.jsonl, heldout: h.jsonl, extractor: last_number}
  copy: {make: [c.py], train: t.jsonl, heldout: h.jsonl, extractor: exact}
objectives:
  sft: {loss: sft}
  dft_alpha0.7: {loss: dft, dft_alpha: 0.7}
"""


def small_study(report, tmp_path: Path):
    """2 tasks x 2 objectives x 2 seeds, three runs finished: math/sft seeds 0 and 1, copy/dft_alpha0.7 seed 0."""
    (tmp_path / "study.yaml").write_text(SPEC, encoding="utf-8")
    spec = report.load_spec(tmp_path / "study.yaml", root=tmp_path)
    for page in ("docs/study/README.md", "README.md"):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text((ROOT / page).read_text(encoding="utf-8"), encoding="utf-8")
    for (task, objective, seed), (correct, ce) in {("math", "sft", 0): (30, 0.5), ("math", "sft", 1): (50, 0.25),
                                                    ("copy", "dft_alpha0.7", 0): (99, None)}.items():
        path = report.run_file(spec, task, objective, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"task": task, "objective": objective, "seed": seed, "steps": 200, "accuracy": correct / 100,
                  "accuracy_interval": list(wilson_interval(correct, 100)), "correct": correct, "n_eval": 100,
                  "final_eval_ce": ce, "wall_s": 600.0, "cpu_s": 900.0,
                  "command": f"python tools/study.py --only {task}/x/{seed}"}
        path.write_text(json.dumps(record), encoding="utf-8")
    return spec


def test_a_cell_is_the_seeds_mean_with_the_pooled_interval(report, tmp_path):
    spec = small_study(report, tmp_path)
    runs = report.load_runs(spec)
    assert sorted(runs) == [("copy", "dft_alpha0.7", 0), ("math", "sft", 0), ("math", "sft", 1)]
    cell = report.cells(spec, runs)["math", "sft"]
    # mean of 30% and 50%; the interval of 80 right out of 200 replies; mean eval CE of 0.5 and 0.25
    assert cell["accuracy"] == pytest.approx(0.4) and cell["interval"] == wilson_interval(80, 200)
    assert cell["range"] == (0.3, 0.5) and cell["eval_ce"] == pytest.approx(0.375) and cell["seeds"] == 2
    assert report.cells(spec, runs)["math", "dft_alpha0.7"] is None
    low, high = wilson_interval(80, 200)
    table = report.results_table(spec, runs)
    assert f"| math | sft | 2 | **40.0%** [{low:.1%}, {high:.1%}] | 30.0%-50.0% | 0.375 |" in table
    assert "| math | dft_alpha0.7 | 0 | - | - | - |" in table
    assert "| copy | dft_alpha0.7 | 1 | **99.0%**" in table and "| 99.0%-99.0% | - |\n" in table  # CE unknown
    assert table.endswith("(accuracy.png)\n") and report.results_table(spec, {}).endswith("no run has finished.\n")


def test_the_status_says_which_rows_exist_and_that_the_study_is_incomplete(report, tmp_path):
    spec = small_study(report, tmp_path)
    status = report.status_text(spec, report.load_runs(spec))
    assert status.startswith("**The study is incomplete: 3 of 8 runs** (2 tasks x 2 objectives x 2 seeds)")
    assert "CPU time per run: 15 min (mean of 3); the 5 runs left need about 1.2 CPU-hours." in status
    assert "Rows that exist:\n\n- math: sft (seeds 0, 1)\n" in status and "- copy: dft_alpha0.7 (seeds 0)\n" in status
    summary = report.readme_summary(spec, report.load_runs(spec))
    assert "| sft | 40.0% (2 seeds) | - |" in summary and "| dft_alpha0.7 | - | 99.0% (1 seed) |" in summary


def test_written_pages_match_and_a_changed_run_is_found(report, tmp_path):
    spec = small_study(report, tmp_path)
    assert report.stale_pages(spec) == ["docs/study/README.md", "README.md"]
    report.write_all(spec)
    assert report.stale_pages(spec) == [] and (tmp_path / "docs" / "study" / "accuracy.png").stat().st_size > 0
    report.run_file(spec, "math", "sft", 1).unlink()
    assert report.stale_pages(spec) == ["docs/study/README.md", "README.md"]


def test_a_spec_objective_without_loss_names_the_key(report, tmp_path):
    (tmp_path / "study.yaml").write_text(SPEC.replace("{loss: sft}", "{dft_alpha: 1}"), encoding="utf-8")
    with pytest.raises(DftuneError, match="study.yaml: objectives.sft needs a 'loss' key"):
        report.load_spec(tmp_path / "study.yaml", root=tmp_path)


def test_only_rows_of_the_spec_are_selected(tmp_path):
    study, report = load_tool("study"), load_tool("study_report")
    spec = report.load_spec()
    assert study.selected(spec, ["copy/dft_power2/2"]) == [("copy", "dft_power2", 2)]
    with pytest.raises(DftuneError, match="--only copy/nope/0: not a TASK/OBJECTIVE/SEED"):
        study.selected(spec, ["copy/nope/0"])
    assert study.objective_flags({"loss": "dft", "dft_alpha": 0.7}) == ["--loss", "dft", "--dft_alpha", "0.7"]


def test_every_objective_of_the_spec_reaches_the_config(tmp_path):
    """Each objective's keys, as the runner passes them, parse into the method it names (nothing is cleared)."""
    from dftune.compare import objective_config

    study, report = load_tool("study"), load_tool("study_report")
    spec = report.load_spec()
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")  # fmt: skip
    for name, keys in spec.objectives.items():
        argv = [str(ROOT / spec.config), "--data_files", str(data), *study.objective_flags(keys)]
        method = objective_config(argv, keys["loss"], 1, tmp_path / name).method
        assert method.loss == keys["loss"], name
        for key, value in keys.items():
            assert getattr(method, key) == value, (name, key)
