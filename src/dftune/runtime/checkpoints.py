"""Checkpoints that are either complete or ignored, resume that finds the newest complete one, and an output_dir
that is checked before anything is written to it.

The Trainer writes `checkpoint-N/` file by file; a crash (SIGKILL, preemption, full disk) can leave it half
written. So a checkpoint counts only once `dftune_complete` is in it: written last, after the Trainer's save has
returned and every file is flushed to disk; it records each file's size. Resume reads only complete checkpoints
whose files pass cheap checks (sizes as recorded, safetensors headers, torch.save archives, JSON), falling back to
an older one when the newest is damaged; rotation (`save_total_limit`) counts and deletes only complete ones, so it
can never leave a run without one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch.distributed as dist
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dftune.config.reliability_args import ReliabilityArguments
from dftune.errors import DftuneError
from dftune.models.integrity import file_problem, pickle_problem
from dftune.runtime.run_lock import lock_holder

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "dftune_complete"
FINAL_SAVE_MARKER = "dftune_final_save"  # in output_dir while the final model and state are being written
CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# The pickles a resume unpickles, weights only: optimizer, scheduler, fp16 scaler, RNG states (one per process).
RESUME_PICKLES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")
# Files that show a folder holds a run's results (data_report.json alone does not: data checks write it first).
RUN_FILES = ("trainer_state.json", "dftune_config.yaml", "config.json", "adapter_config.json", "model.safetensors")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(checkpoint: Path, global_step: int) -> None:
    """Flush every file of `checkpoint` to disk, then write the marker (itself written whole, by rename)."""
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file():
            _fsync(path)
    sizes = {str(p.relative_to(checkpoint)): p.stat().st_size for p in sorted(checkpoint.rglob("*"))
             if p.is_file() and p.name != COMPLETE_MARKER}  # fmt: skip
    tmp = checkpoint / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps({"global_step": global_step, "files": sizes}) + "\n", encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, checkpoint / COMPLETE_MARKER)
    _fsync(checkpoint)  # the rename itself


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def check_not_being_written(name: str | None, what: str) -> None:
    """A `checkpoint-N` folder given to `eval` or `generate` is not one its run is still saving: without its marker
    while a run holds its output_dir's lock, its files are still arriving (the weights first, the tokenizer after)."""
    path = Path(name or "").expanduser()
    if not name or not CHECKPOINT_RE.match(path.name) or not path.is_dir() or is_complete(path):
        return
    holder = lock_holder(path.parent)
    if holder is not None:
        raise DftuneError(f"{what} {name} is still being written by the run in {path.parent} ({holder}): it has no "
                          f"{COMPLETE_MARKER} yet; wait until it has, or give an earlier complete checkpoint")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What makes a complete checkpoint unreadable ("optimizer.pt is truncated: ..."), or None when it looks whole.

    Cheap: sizes against the marker's record (older markers have none), then each file's own check."""
    try:
        recorded = json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}  # a marker of an older dftune, or one a user wrote by hand: check the files themselves
    for name, size in recorded.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, but {size} were written (truncated or overwritten)"
    for path in sorted(checkpoint.rglob("*")):
        problem = file_problem(path) if path.is_file() and path.name != COMPLETE_MARKER else None
        if problem is None and path.parent == checkpoint and RESUME_PICKLES.match(path.name):
            problem = pickle_problem(path)
        if problem:
            return f"{path.relative_to(checkpoint)} {problem}"
    return None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files can be read; newer incomplete or damaged ones are skipped with a
    warning. Every complete one damaged is an error: starting fresh would silently throw the run away."""
    damaged = []
    for checkpoint in reversed(list_checkpoints(output_dir)):
        if not is_complete(checkpoint):
            logger.warning("skipping incomplete checkpoint %s (no %s marker: its save was interrupted)",
                           checkpoint, COMPLETE_MARKER)
            continue
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("skipping damaged checkpoint %s: %s; falling back to an older one", checkpoint, problem)
        damaged.append(f"{checkpoint.name}: {problem}")
    if damaged:
        raise DftuneError(f"every complete checkpoint in {output_dir} is damaged ({'; '.join(damaged)}); restore "
                          "them from a copy, or delete them (or set overwrite_output_dir: true) to start fresh")
    return None


def rotate_checkpoints(output_dir: Path, save_total_limit: int | None, keep: set[Path]) -> None:
    """Keep the newest `save_total_limit` complete checkpoints (and `keep`, e.g. the best one); delete older
    complete ones and the incomplete leftovers older than the newest complete one. Never the newest complete one."""
    if not save_total_limit or save_total_limit <= 0:
        return
    checkpoints = list_checkpoints(output_dir)
    complete = [c for c in checkpoints if is_complete(c)]
    if not complete:
        return
    kept = set(complete[-save_total_limit:]) | {complete[-1]} | {Path(k) for k in keep}
    newest_step = int(CHECKPOINT_RE.match(complete[-1].name).group(1))
    for checkpoint in checkpoints:
        stale = int(CHECKPOINT_RE.match(checkpoint.name).group(1)) < newest_step
        if checkpoint not in kept and (is_complete(checkpoint) or stale):
            logger.info("deleting checkpoint %s (save_total_limit %d)", checkpoint, save_total_limit)
            shutil.rmtree(checkpoint, ignore_errors=True)


def resolve_resume(value: str | None, output_dir: Path) -> str | None:
    """`resume_from_checkpoint` as a checkpoint path or None (a fresh run).

    auto: the newest complete checkpoint in output_dir, else a fresh run (so one command line serves the first
    start and every restart); true: the same, but no checkpoint is an error; a path: that checkpoint, which must be
    complete; false or absent: a fresh run.
    """
    word = None if value is None else str(value).strip()
    if word is None or word.lower() in ("", "false", "none"):
        return None
    if word.lower() in ("auto", "true"):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is not None:
            logger.info("resuming from %s", checkpoint)
            return str(checkpoint)
        if word.lower() == "true":
            raise DftuneError(f"resume_from_checkpoint: true, but output_dir {output_dir} holds no complete "
                              "checkpoint; use auto to start fresh when there is none")
        logger.info("resume_from_checkpoint: auto found no complete checkpoint in %s: starting fresh", output_dir)
        return None
    path = Path(word).expanduser()
    if not path.exists():
        raise DftuneError(f"resume_from_checkpoint: {word} does not exist (auto picks the newest in output_dir)")
    if not path.is_dir():
        raise DftuneError(f"resume_from_checkpoint: {word} is a file; give a checkpoint-N folder")
    if not (path / "trainer_state.json").is_file():
        raise DftuneError(f"resume_from_checkpoint: {word} is not a Trainer checkpoint (no trainer_state.json)")
    if not is_complete(path):
        raise DftuneError(f"resume_from_checkpoint: {word} is incomplete (no {COMPLETE_MARKER} marker: its save "
                          "was interrupted); use auto to pick the newest complete one")
    problem = checkpoint_problem(path)
    if problem:
        raise DftuneError(f"resume_from_checkpoint: {word} is damaged: {problem}; resume from an older checkpoint, "
                          "or use auto, which skips damaged ones")
    return str(path)


def prepare_output_dir(output_dir: Path, *, resume: str | None, resume_asked: bool, overwrite: bool,
                       main_process: bool) -> None:
    """Refuse an output_dir that holds another run (unless resuming or overwriting) or cannot be written.

    `resume_asked` (auto/true found nothing to resume): checkpoint folders there are incomplete leftovers of this
    same run, fine to train over; a finished run's files still need overwrite_output_dir, unless its final save
    failed (FINAL_SAVE_MARKER still there, e.g. a full disk): then they are this run's leftovers too.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise DftuneError(f"output_dir {output_dir} is a file; give a folder")
    if resume is None and output_dir.is_dir():
        checkpoints = list_checkpoints(output_dir)
        leftovers = resume_asked and (output_dir / FINAL_SAVE_MARKER).exists()
        held = [] if leftovers else [n for n in RUN_FILES if (output_dir / n).exists()]
        held += [] if resume_asked else [p.name for p in checkpoints]
        if held and not overwrite:
            raise DftuneError(
                f"output_dir {output_dir} holds another run ({', '.join(held[:4])}); set overwrite_output_dir: true "
                "to replace it, resume_from_checkpoint: auto to continue it, or choose another output_dir"
            )
        if overwrite and main_process:
            for checkpoint in checkpoints:  # else a later `auto` would resume the old run
                logger.info("overwrite_output_dir: removing %s", checkpoint)
                shutil.rmtree(checkpoint)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".dftune-write-test"):
            pass
    except OSError as err:
        raise DftuneError(f"cannot write to output_dir {output_dir}: {err.strerror or err}") from None


def resolve_run_dir(training: TrainingArguments, reliability: ReliabilityArguments) -> str | None:
    """Check output_dir and resolve `resume_from_checkpoint` (auto/true/path/false) to a checkpoint path or None."""
    output_dir = Path(training.output_dir)
    resume = resolve_resume(training.resume_from_checkpoint, output_dir)
    asked = str(training.resume_from_checkpoint).strip().lower() in ("auto", "true")
    prepare_output_dir(output_dir, resume=resume, resume_asked=asked, overwrite=reliability.overwrite_output_dir,
                       main_process=training.process_index == 0)
    same_on_every_process(resume, output_dir)
    return resume


def same_on_every_process(resume: str | None, output_dir: Path) -> None:
    """Every process resumes from the same step, or the run stops before training. Each process reads its own
    output_dir: nodes whose output_dir is not one shared folder (a node-local disk) find different checkpoints
    (global rank 0 alone writes complete ones), and would otherwise train from different steps, silently."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    found: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(found, Path(resume).name if resume else None)
    if len(set(found)) > 1:
        said = [f"rank {rank}: {name or 'no complete checkpoint, a fresh start'}" for rank, name in enumerate(found)]
        raise DftuneError(
            f"the processes of this run found different checkpoints to resume from in output_dir {output_dir} "
            f"({'; '.join(said[:4])}{'; ...' if len(said) > 4 else ''}). Every node reads output_dir: put it on a file "
            "system all nodes share, or copy the checkpoint to every node's output_dir"
        )
