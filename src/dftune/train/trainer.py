"""`transformers.Trainer` with a dftune objective wired in: exact normalisation and honest metrics.

The Trainer stays in charge of everything else (DeepSpeed, FSDP, checkpoints, trackers). We change three things:
- the loss: one of `dftune.losses.OBJECTIVES`, normalised by the *global* count of its unit (target tokens for
  sft/dft, samples for bft) over the accumulation steps and processes, so any batch x accumulation x process
  split gives the same gradient;
- the logs: the objective's metrics averaged over the whole logging window and all processes;
- evaluation: the objective's loss, plain CE and avg_p_correct over the whole eval set, not a mean of batch means.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from dftune.losses import OBJECTIVES, compute_objective
from dftune.train.metrics import MetricWindow


def sample_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Packed rows restart `position_ids` at 0 for each sample: number the samples across the batch. `[B, T]`."""
    return torch.cumsum((position_ids == 0).flatten(), 0).view_as(position_ids) - 1


def packed_sample_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Sample ids of a padding-free packed batch (position_ids and no attention_mask), else None (one per row)."""
    if "position_ids" in batch and "attention_mask" not in batch:
        return sample_ids_from_positions(batch["position_ids"])
    return None


class ObjectiveTrainer(Trainer):
    """Trainer whose loss is a dftune objective (`objective` in OBJECTIVES, with its keyword arguments)."""

    # compute_loss returns a loss already divided by the global count: the Trainer must not divide it again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, objective: str, objective_kwargs: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.objective_kwargs = objective_kwargs
        self.unit = OBJECTIVES[objective].normalise_by
        self._train_window = MetricWindow()
        self._eval_window = MetricWindow()

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[override]
        """Replace transformers' token count by the objective's own unit, summed over processes when averaging."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        objective = OBJECTIVES[self.objective]
        count = sum(objective.local_count(b["labels"], packed_sample_ids(b)) for b in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batch_samples, count

    def compute_loss(  # type: ignore[override]
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        kwargs = dict(self.objective_kwargs)
        sample_ids = packed_sample_ids(inputs)
        if sample_ids is not None and self.unit == "samples":
            kwargs["sample_ids"] = sample_ids
        # Training: normalise by the global count from get_batch_samples. Evaluation passes a token count whatever
        # the objective, so there we normalise per batch and let the window build the exact dataset-level mean.
        global_count = num_items_in_batch if model.training else None
        out = compute_objective(self.objective, outputs.logits, labels, global_count=global_count, **kwargs)
        loss = out.loss
        if model.training:
            self._train_window.add(out)
            if global_count is not None and self.args.average_tokens_across_devices:
                # DDP and DeepSpeed average gradients over processes; the global count already divides the sum.
                loss = loss * self.accelerator.num_processes
        else:
            self._eval_window.add(out, loss_weight=out.num_tokens if self.unit == "tokens" else out.num_samples)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_window:
            logs.update(self._train_window.pop_means(self.accelerator))
        super().log(logs, start_time)

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any):  # type: ignore[override]
        self._eval_window = MetricWindow()
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        if self._eval_window:
            means = self._eval_window.pop_means(self.accelerator)
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in means.items()})
        return output
