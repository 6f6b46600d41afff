"""The ways in: `dftune eval --lm_eval_tasks`, lm-eval's own CLI (`python -m dftune.harness`), the `lm_eval.models`
entry point; and the errors: no lm-eval installed, a task that is not one, a model_args key the backend lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from dftune.cli.main import main
from dftune.errors import DftuneError
from dftune.harness.run import run_lm_eval
from processes import run


def test_eval_command_writes_lm_evals_results(tiny_model_dir, task_dir, tmp_path, capsys):
    """`dftune eval --lm_eval_tasks`: the table printed, and the JSON holds the scores `run_lm_eval` returns."""
    output = tmp_path / "scores.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--lm_eval_tasks", "dftune_mc,dftune_gen",
                 "--lm_eval_include_path", str(task_dir), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "dftune_mc" in printed and "exact_match" in printed and str(output) in printed
    written = json.loads(output.read_text())["results"]
    direct = run_lm_eval(str(tiny_model_dir), None, ["dftune_mc", "dftune_gen"], include_path=str(task_dir),
                         batch_size=32)["results"]
    assert written["dftune_mc"]["acc,none"] == direct["dftune_mc"]["acc,none"]
    assert written["dftune_gen"]["exact_match,none"] == direct["dftune_gen"]["exact_match,none"]


def test_lm_evals_own_command_line_runs_the_backend(tiny_model_dir, task_dir, tmp_path):
    """`python -m dftune.harness run --model dftune ...` is lm-eval's CLI, with its flags and its output files."""
    out = tmp_path / "lm_eval_out"
    result = run([sys.executable, "-m", "dftune.harness", "run", "--model", "dftune", "--model_args",
                  f"pretrained={tiny_model_dir}", "--tasks", "dftune_mc", "--include_path", str(task_dir),
                  "--output_path", str(out)], step="python -m dftune.harness run", timeout=300,
                 capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    scores = json.loads(files[0].read_text())["results"]["dftune_mc"]
    direct = run_lm_eval(str(tiny_model_dir), None, ["dftune_mc"], include_path=str(task_dir))["results"]
    assert scores["acc,none"] == direct["dftune_mc"]["acc,none"]


def test_the_entry_point_names_the_backend():
    """lm-eval releases with plugin discovery resolve `--model dftune` through this entry point (pyproject.toml)."""
    from dftune.harness.backend import DftuneLM

    (point,) = [p for p in entry_points(group="lm_eval.models") if p.name == "dftune"]
    assert point.load() is DftuneLM
    from lm_eval.api.registry import get_model

    assert get_model("dftune") is DftuneLM


def test_without_lm_eval_the_error_names_the_extra(tiny_model_dir, tmp_path):
    """lm-eval made unimportable (None in sys.modules): one line naming the extra, no traceback, exit 2."""
    code = ("import sys; sys.modules['lm_eval'] = None; from dftune.cli.main import main; "
            f"sys.exit(main(['eval', '--model', {str(tiny_model_dir)!r}, '--lm_eval_tasks', 'x', "
            f"'--output', {str(tmp_path / 'r.json')!r}]))")
    result = run([sys.executable, "-c", code], step="dftune eval without lm-eval", timeout=120,
                 capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install -e '.[lmeval]'" in result.stderr and "Traceback" not in result.stderr
    module = subprocess.run([sys.executable, "-c", "import sys; sys.modules['lm_eval'] = None; import runpy; "
                             "runpy.run_module('dftune.harness', run_name='__main__')"], capture_output=True,
                            text=True, timeout=120)
    assert module.returncode == 1 and "pip install -e '.[lmeval]'" in module.stderr
    assert "Traceback" not in module.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--data FILE (generation accuracy) or --lm_eval_tasks"),
        (["--data", "d.jsonl", "--lm_eval_tasks", "a"], "one of the two"),
        (["--lm_eval_tasks", "no_such_task_here"], "no_such_task_here is not an lm-eval task"),
    ],
)
def test_eval_mistakes_are_one_line(argv, message, tiny_model_dir, task_dir, tmp_path, capsys):
    include = ["--lm_eval_include_path", str(task_dir)] if "--lm_eval_tasks" in argv else []
    code = main(["eval", "--model", str(tiny_model_dir), *argv, *include, "--output", str(tmp_path / "r.json")])
    assert code == 2 and message in capsys.readouterr().err


def test_a_model_arg_the_backend_lacks_is_named(tiny_model_dir, task_dir):
    with pytest.raises(DftuneError, match="mc_samples: not a key of the dftune backend for a causal model"):
        run_lm_eval(str(tiny_model_dir), None, ["dftune_mc"], include_path=str(task_dir),
                    model_args={"mc_samples": 4})
