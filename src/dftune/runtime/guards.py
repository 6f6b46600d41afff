"""Reliability shared by every dftune trainer (objectives, diffusion, DPO): a step whose loss or gradient norm is
not finite leaves weights, optimizer and scheduler as they were (counted as `nonfinite_steps`;
`max_nonfinite_steps` in a row save the last good state and stop); an applied update that leaves a weight NaN or
inf stops the run at that step before anything of it is saved (`FiniteWeights`); a checkpoint counts only once its
`dftune_complete` marker is written (see `dftune.runtime.checkpoints`); a full disk while saving a checkpoint
or the final model is one message saying what is kept (`dftune.runtime.disk`), and leaves an output_dir that
`resume_from_checkpoint: auto` accepts.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dftune.runtime.checkpoints import (
    FINAL_SAVE_MARKER,
    is_complete,
    list_checkpoints,
    mark_complete,
    rotate_checkpoints,
)
from dftune.errors import RunStopped
from dftune.runtime.disk import disk_full_guard, folder_bytes

logger = logging.getLogger(__name__)


class GuardedUpdates:
    """Mixin for `transformers.Trainer` subclasses (put it first in the bases): call `init_guards` in `__init__`
    and `flag_nonfinite(loss)` on every training micro-batch's loss."""

    def init_guards(self, max_nonfinite_steps: int) -> None:
        self.max_nonfinite_steps = max_nonfinite_steps
        self._nonfinite_loss = False  # a micro-batch of the current optimizer step had a non-finite loss
        self._nonfinite_in_a_row = 0
        self._nonfinite_window = 0  # skipped updates since the last log
        self.stopped_nonfinite_at: int | None = None  # the step whose checkpoint holds the last good state
        self.add_callback(FiniteWeights(self))  # type: ignore[attr-defined]

    def flag_nonfinite(self, loss: torch.Tensor) -> bool:
        """True (and this optimizer step will be skipped) when a micro-batch's training loss is not finite."""
        if torch.isfinite(loss.detach()).all():
            return False
        self._nonfinite_loss = True
        return True

    def _get_grad_norm(self, model, grad_norm=None):  # type: ignore[override]
        """The Trainer calls this after clipping, right before `optimizer.step()`: where a bad update is dropped."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._guard_update(model, grad_norm)
        return grad_norm

    def _guard_update(self, model: nn.Module, grad_norm: Any) -> None:
        """Skip this optimizer step when its loss or gradient norm is not finite; stop after too many in a row.

        Skipping is exact: with every `.grad` set to None, torch optimizers leave each parameter and its state
        (moments, step counts) untouched, and marking the step as skipped (what accelerate does for an fp16
        overflow) keeps the Trainer from stepping the scheduler. With fp16 the GradScaler already skips steps whose
        gradients overflow (and lowers its scale), so there only a non-finite loss counts.
        """
        bad_loss, self._nonfinite_loss = self._nonfinite_loss, False
        if self.args.world_size > 1:  # every process must skip the same steps; the grad norm is already global
            flag = torch.tensor([float(bad_loss)], device=self.args.device)
            bad_loss = bool(self.accelerator.reduce(flag, reduction="sum").item())
        scaler = self.accelerator.scaler
        bad_norm = scaler is None and grad_norm is not None and not math.isfinite(float(grad_norm))
        bad = bad_loss or bad_norm
        can_skip = scaler is None and not self.is_deepspeed_enabled  # DeepSpeed steps its own optimizer
        if can_skip and isinstance(self.optimizer, AcceleratedOptimizer):
            self.optimizer._is_overflow = bad  # read back as accelerator.optimizer_step_was_skipped
        if not bad:
            self._nonfinite_in_a_row = 0
            return
        if can_skip:
            model.zero_grad(set_to_none=True)
        self._nonfinite_in_a_row += 1
        self._nonfinite_window += 1
        step = self.state.global_step + 1
        logger.warning("step %d: non-finite %s: update skipped (%d in a row)", step,
                       "loss" if bad_loss else f"gradient norm ({float(grad_norm)})", self._nonfinite_in_a_row)
        if self.max_nonfinite_steps and self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            # The weights are those of the last good update: save them, with the data position past the bad steps.
            self.control.should_save = True
            self.control.should_training_stop = True
            self.stopped_nonfinite_at = step

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, then the `dftune_complete` marker, then rotation among complete checkpoints."""
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and checkpoint.is_dir():
            # An interrupted save of this step, or an earlier run's (resumed from an older checkpoint because this
            # one was damaged): no stale file, nor its marker, may survive into the new save.
            shutil.rmtree(checkpoint)
        self.accelerator.wait_for_everyone()
        # transformers' rotation would count the incomplete checkpoints too (and run before our marker): ours does not.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        last = _last_good(run_dir)
        kept = f"The last complete checkpoint, {last}, is kept." if last else "No complete checkpoint was saved yet."
        with disk_full_guard(run_dir, what=checkpoint.name, needed=folder_bytes(last), kept=kept, remove=checkpoint):
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            self.accelerator.wait_for_everyone()  # every process has written its part (RNG states, shards)
            if self.args.should_save:
                mark_complete(checkpoint, self.state.global_step)
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            rotate_checkpoints(run_dir, limit, keep={Path(best)} if best else set())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The final model (a checkpoint's model is `_internal_call`): FINAL_SAVE_MARKER stays in output_dir until
        `save_state` has returned, so a save cut short (a full disk) leaves files `auto` may train over."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call)  # type: ignore[misc]
        target = Path(output_dir or self.args.output_dir)
        if self.args.should_save:
            target.mkdir(parents=True, exist_ok=True)
            (target / FINAL_SAVE_MARKER).write_text("the final save of this run has not finished\n", encoding="utf-8")
        needed = sum(p.numel() * p.element_size() for p in self.model.parameters())
        with disk_full_guard(target, what="the final model", needed=needed, kept=_kept(target)):
            super().save_model(output_dir, _internal_call)  # type: ignore[misc]

    def save_state(self) -> None:
        """trainer_state.json, then the final save counts as finished (FINAL_SAVE_MARKER removed)."""
        target = Path(self.args.output_dir)
        with disk_full_guard(target, what="trainer_state.json", kept=_kept(target)):
            super().save_state()  # type: ignore[misc]
        if self.args.should_save:
            (target / FINAL_SAVE_MARKER).unlink(missing_ok=True)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        """No step past max_steps: transformers 5.23 runs one more when resumed from the final checkpoint."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)  # type: ignore[misc]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs["nonfinite_steps"], self._nonfinite_window = self._nonfinite_window, 0
        super().log(logs, start_time)  # type: ignore[misc]


def _last_good(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, for messages (quietly: resume is what checks its files)."""
    complete = [c for c in list_checkpoints(run_dir) if is_complete(c)]
    return complete[-1] if complete else None


def _kept(output_dir: Path) -> str:
    last = _last_good(output_dir)
    return (f"The last complete checkpoint, {last}, is kept." if last
            else "No checkpoint was saved (save_steps); the run must start again.")


class FiniteWeights(TrainerCallback):
    """After each applied update, every trainable weight is finite, or the run stops there (exit 1, the step named)
    before the Trainer can save a checkpoint or the final model of it. A finite loss and gradient norm do not
    guarantee it: `learning_rate: 1e30` (or an optimizer state gone bad) turns finite gradients into infinite
    weights, and every later loss is NaN. Weights already non-finite when training starts (the model's own) are a
    warning instead: those steps are skipped and counted as non-finite, as before."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.watch = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        bad = self._first_nonfinite()
        if bad is not None:
            self.watch = False
            logger.warning("the model's weight %s holds NaN or inf before training: its losses will be non-finite "
                           "(steps skipped, max_nonfinite_steps); check the model folder", bad)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.watch or self.trainer.accelerator.optimizer_step_was_skipped:
            return
        bad = self._first_nonfinite()
        if bad is None:
            return
        step = state.global_step + 1
        raise RunStopped(
            f"stopped at step {step}: its update made the weight {bad} non-finite (NaN or inf), though the loss and "
            f"gradient norm were finite: the update was too large (learning_rate {args.learning_rate}). Nothing of "
            f"step {step} is saved. {_kept(Path(args.output_dir))} Lower learning_rate and run again "
            "(--resume_from_checkpoint auto continues from the last complete checkpoint)", exit_code=1,
        )

    def _first_nonfinite(self) -> str | None:
        """The name of a trainable weight holding NaN or inf on any process, or None. One sum per weight (a NaN or
        inf element makes it non-finite) and one device sync, not a boolean copy of every weight."""
        model = self.trainer.model
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            return None
        sums = torch.stack([p.detach().sum(dtype=torch.float32) for _, p in trainable])
        finite = torch.isfinite(sums)
        if self.trainer.args.world_size > 1:  # every process stops at the same step (FSDP: each holds a shard)
            flag = (~finite).any().float().reshape(1).to(self.trainer.args.device)
            if not self.trainer.accelerator.reduce(flag, reduction="sum").item():
                return None
            return next((name for (name, _), ok in zip(trainable, finite.tolist()) if not ok), "on another process")
        if bool(finite.all()):
            return None
        return next(name for (name, _), ok in zip(trainable, finite.tolist()) if not ok)
