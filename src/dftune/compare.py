"""`dftune compare`: one config trained once per objective (and seed) through `dftune.run.run`, then one table and
one plot.

    DIR/<loss>-seed<k>/     each run, exactly as `dftune train` writes it (with its eval_results.jsonl)
    DIR/compare.md          final and best eval CE, final avg_p_correct, held-out accuracy with its 95% CI, per run
    DIR/compare.json        the same numbers, for scripts
    DIR/compare.png         every run's curves overlaid (`dftune plot` on the run folders)
    DIR/accuracy.png        held-out accuracy per run with its interval (and the untrained model's, `eval_base`)

Switching objective goes through the config layer: the config is parsed as `dftune train` would parse it, then
its method section is rebuilt with `dataclasses.replace` (so `MethodArguments.__post_init__` checks it again, and
then the stage's own `check`), with the keys that select another objective (`dft_alpha`, `use_dft_loss`, ...,
as the objective registry declares them) cleared. Runs go one after another in this process: launch it with `python`/`dftune`, not torchrun.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path

from dftune.config.objective_args import selecting_keys_cleared
from dftune.config.parse import RunConfig
from dftune.data.formats import Messages
from dftune.data.readers import resolve_sources
from dftune.data.validate import collect_conversations
from dftune.errors import DftuneError
from dftune.evaluation.generate import evaluate_records
from dftune.models.loading import load_model, load_tokenizer
from dftune.outputs import write_text
from dftune.run import parse_config, run
from dftune.viz.accuracy import plot_accuracy
from dftune.viz.curves import RUN_PANELS, plot_runs

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    loss: str
    seed: int
    output_dir: str
    steps: int
    final_eval_ce: float | None
    best_eval_ce: float | None
    final_avg_p_correct: float | None  # training, averaged over the last logging window
    # greedy generation on the eval records that end with a reference answer, scored by the chosen extractor
    accuracy: float | None = None
    accuracy_interval: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return BASE if self.loss == BASE else f"{self.loss}-seed{self.seed}"


BASE = "base"  # the row of the model before any training


def objective_config(argv: Sequence[str], loss: str, seed: int, output_dir: Path) -> RunConfig:
    """The run config of one objective and seed: `argv` as `dftune train` parses it, then the method switched."""
    config = parse_config([*argv, "--output_dir", str(output_dir), "--seed", str(seed)])
    method = config.method
    cleared = selecting_keys_cleared(method, loss)
    for key, value in cleared.items():
        if getattr(method, key) != value:
            config.notes.append(f"compare: {key} cleared for loss {loss}")
    try:
        config.method = dataclasses.replace(method, loss=loss, **cleared)
        config.stage_args.check(config)  # e.g. stage dllm has no bft
    except ValueError as err:
        raise DftuneError(f"--losses {loss}: {err}") from None
    name = f"{loss}-seed{seed}"
    config.training.run_name = f"{config.training.run_name}-{name}" if config.training.run_name else name
    return config


def reference_records(config: RunConfig) -> list[Messages]:
    """Eval conversations whose last message is an assistant turn (a reference answer)."""
    if not config.data.eval_files:
        return []
    conversations, _ = collect_conversations(resolve_sources(config.data.eval_files))
    return [m for m in conversations.messages if m[-1]["role"] == "assistant"]


def answer_budget(tokenizer, records: list[Messages], cap: int = 512) -> int:
    """New tokens for generation: the longest reference answer plus room for the end-of-turn tokens."""
    longest = max(len(tokenizer(m[-1]["content"], add_special_tokens=False)["input_ids"]) for m in records)
    return min(longest + 4, cap)


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How held-out replies are generated and scored: `dftune eval`'s extractor, a token budget (None: the longest
    reference answer's, `answer_budget`)."""

    extractor: str = "exact"
    max_new_tokens: int | None = None


def score(model, tokenizer, config: RunConfig, records: list[Messages], scoring: Scoring, output: Path) -> dict:
    """Held-out accuracy and its interval as RunResult fields; per-record results go to `output`."""
    if not records or config.method.stage != "sft":  # dllm models do not decode left to right with generate()
        return {}
    report = evaluate_records(
        model, tokenizer, records, extractor=scoring.extractor,
        max_new_tokens=scoring.max_new_tokens or answer_budget(tokenizer, records),
        batch_size=config.training.per_device_eval_batch_size,
    )  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    report.write_jsonl(output)
    return {"accuracy": report.accuracy, "accuracy_interval": report.interval}


def summarise(trainer, config: RunConfig, seed: int, records: list[Messages], scoring: Scoring) -> RunResult:
    history = trainer.state.log_history
    eval_ce = [e["eval_ce"] for e in history if "eval_ce" in e]
    train_p = [e["avg_p_correct"] for e in history if "avg_p_correct" in e]
    output = Path(config.training.output_dir) / "eval_results.jsonl"
    return RunResult(
        loss=config.method.loss,
        seed=seed,
        output_dir=str(config.training.output_dir),
        steps=trainer.state.global_step,
        final_eval_ce=eval_ce[-1] if eval_ce else None,
        best_eval_ce=min(eval_ce) if eval_ce else None,
        final_avg_p_correct=train_p[-1] if train_p else None,
        **score(trainer.model, trainer.processing_class, config, records, scoring, output),
    )


def base_result(config: RunConfig, records: list[Messages], scoring: Scoring, output_dir: Path) -> RunResult:
    """The untrained model's held-out accuracy: the row every objective is measured against."""
    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    scores = score(model, tokenizer, config, records, scoring, output_dir / BASE / "eval_results.jsonl")
    return RunResult(BASE, config.training.seed, str(config.model.model_name_or_path), 0, None, None, None, **scores)


def _cell(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.4f}"


def _accuracy_cell(r: RunResult) -> str:
    if r.accuracy_interval is None:
        return _cell(r.accuracy, percent=True)
    low, high = r.accuracy_interval
    return f"{r.accuracy:.1%} [{low:.1%}, {high:.1%}]"


def markdown_table(results: Sequence[RunResult], extractor: str = "exact") -> str:
    """One row per run; with several seeds, a mean row per objective after them."""
    columns = ("final eval CE", "best eval CE", "final avg_p_correct", f"accuracy ({extractor}) [95% CI]")
    lines = ["| run | loss | seed | steps | " + " | ".join(columns) + " |", "|---" * (4 + len(columns)) + "|"]

    def row(name: str, loss: str, seed: str, steps: str, values: Sequence[float | None], accuracy: str) -> str:
        cells = [_cell(v) for v in values] + [accuracy]
        return f"| {name} | {loss} | {seed} | {steps} | " + " | ".join(cells) + " |"

    metrics = ("final_eval_ce", "best_eval_ce", "final_avg_p_correct", "accuracy")
    for r in results:
        lines.append(row(r.name, r.loss, str(r.seed), str(r.steps), [getattr(r, m) for m in metrics[:3]],
                         _accuracy_cell(r)))  # fmt: skip
    for loss in dict.fromkeys(r.loss for r in results):
        group = [r for r in results if r.loss == loss]
        if len(group) > 1:
            means = []
            for m in metrics:
                values = [getattr(r, m) for r in group if getattr(r, m) is not None]
                means.append(statistics.fmean(values) if values else None)
            lines.append(row(f"**{loss} mean**", loss, f"{len(group)} seeds", "", means[:3], _cell(means[3], True)))
    return "\n".join(lines) + "\n"


def write_outputs(
    results: Sequence[RunResult], histories: dict[str, list], output_dir: Path, title: str, extractor: str
) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, extractor)
    write_text(output_dir / "compare.md", f"# {title}\n\n{table}")
    payload = {"extractor": extractor, "runs": [{**dataclasses.asdict(r), "name": r.name} for r in results]}
    write_text(output_dir / "compare.json", json.dumps(payload, indent=2) + "\n")
    scored = [r for r in results if r.accuracy_interval is not None]
    if scored:
        plot_accuracy({r.name: (r.accuracy, *r.accuracy_interval) for r in scored}, output_dir / "accuracy.png",
                      title=f"held-out accuracy ({extractor}), 95% CI")  # fmt: skip
    if not histories:
        return output_dir / "compare.md"
    return plot_runs(histories, output_dir / "compare.png", panels=RUN_PANELS, title=title, columns=3)


def compare(
    argv: Sequence[str],
    losses: Sequence[str],
    output_dir: str | Path,
    seeds: Sequence[int] | None = None,
    *,
    scoring: Scoring = Scoring(),
    eval_base: bool = False,
) -> list[RunResult]:
    """Train `argv` (`[CONFIG.yaml] [--key value ...]`) once per loss and seed; write table and plot after each run.

    `scoring` says how held-out replies are scored; `eval_base` scores the untrained model first.
    """
    output_dir = Path(output_dir)
    base = parse_config(list(argv))  # mistakes in the config stop here, before any training
    seeds = list(seeds) if seeds else [base.training.seed]
    records = reference_records(base)
    config_name = Path(argv[0]).name if argv and not argv[0].startswith("--") else "flags"
    title = f"dftune compare: {', '.join(losses)} ({config_name})"
    # Every run's config first: a loss that contradicts the config (bft with stage dllm) stops before any training.
    runs = [(loss, seed) for loss in losses for seed in seeds]
    plan = [(seed, objective_config(argv, loss, seed, output_dir / f"{loss}-seed{seed}")) for loss, seed in runs]
    results: list[RunResult] = []
    histories: dict[str, list] = {}
    if eval_base and records:
        results.append(base_result(base, records, scoring, output_dir))
        logger.info("compare: %s accuracy %.1f%%", BASE, 100 * results[-1].accuracy)
        write_outputs(results, histories, output_dir, title, scoring.extractor)
    for number, (seed, config) in enumerate(plan, 1):
        logger.info("compare: run %d of %d: loss %s, seed %d", number, len(plan), config.method.loss, seed)
        trainer = run(config)
        result = summarise(trainer, config, seed, records, scoring)
        results.append(result)
        histories[result.name] = trainer.state.log_history
        del trainer  # free the model before the next run loads its own
        gc.collect()
        plot = write_outputs(results, histories, output_dir, title, scoring.extractor)
    logger.info("compare: wrote %s, %s and %s", output_dir / "compare.md", output_dir / "compare.json", plot)
    return results
