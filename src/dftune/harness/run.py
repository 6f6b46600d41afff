"""`dftune eval --model DIR --lm_eval_tasks t1,t2`: lm-eval's tasks scored through the dftune backend, in process.

In process, the backend is registered by importing `dftune.harness.backend`, so this works with every lm-eval
release, including those that read no `lm_eval.models` entry points (0.4.13 reads none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dftune.errors import DftuneError
from dftune.harness import LMEVAL_INSTALL


def require_lm_eval(what: str) -> None:
    """lm-eval is importable, else a DftuneError naming the extra to install."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise DftuneError(f"{what} needs lm-evaluation-harness, an optional extra: {LMEVAL_INSTALL}") from None


def run_lm_eval(model: str, adapter: str | None, tasks: list[str], *, include_path: str | None = None,
                limit: int | None = None, num_fewshot: int | None = None, batch_size: int = 1,
                model_args: dict[str, Any] | None = None, log_samples: bool = False) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` of `tasks` (names, or tasks of the YAML files under `include_path`) with
    `--model dftune`: the results dict (per-sample logs under "samples" with `log_samples`)."""
    require_lm_eval("--lm_eval_tasks")
    import lm_eval
    from lm_eval.tasks import TaskManager

    import dftune.harness.backend  # noqa: F401  registers the name `dftune` (lm-eval 0.4.13 reads no entry points)

    if include_path is not None and not Path(include_path).expanduser().exists():
        raise DftuneError(f"--lm_eval_include_path {include_path}: no such file or folder (a folder of task YAMLs)")
    # Indexing lm-eval's own ~200 task folders takes seconds: skipped when include_path holds every task asked for.
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" nor under --lm_eval_include_path {include_path}" if include_path else ""
        raise DftuneError(f"--lm_eval_tasks: {', '.join(unknown)} is not an lm-eval task{where}; "
                          "`lm_eval ls tasks` lists them (add --include_path for your own YAMLs)")
    args = {"pretrained": model, **({"peft": adapter} if adapter else {}), **(model_args or {})}
    results = lm_eval.simple_evaluate(model="dftune", model_args=args, tasks=tasks, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, batch_size=batch_size, log_samples=log_samples)
    if results is None:  # only a non-zero rank of a distributed run gets None
        return {}
    return dict(results)


def write_results(results: dict[str, Any], path: Path) -> None:
    """lm-eval's results (scores, task configs, versions) as JSON, written whole."""
    from dftune.outputs import write_text

    kept = {k: results[k] for k in ("results", "groups", "configs", "versions", "n-shot", "config") if k in results}
    write_text(path, json.dumps(kept, indent=2, default=str) + "\n")


def summary(results: dict[str, Any]) -> str:
    """lm-eval's own results table (markdown)."""
    from lm_eval.utils import make_table

    return make_table(results)
