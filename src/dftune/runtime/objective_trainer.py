"""`transformers.Trainer` with a dftune objective wired in: exact normalisation and honest metrics.

The Trainer stays in charge of everything else (DeepSpeed, FSDP, checkpoints, trackers). We change three things:
- the loss: one of `dftune.losses.OBJECTIVES`, normalised by the *global* count of its unit (target tokens or
  samples, as the objective declares) over the accumulation steps and processes, so any batch x accumulation x
  process split gives the same gradient; its settings as its schedule has them at the current step; packed
  sample ids and a reference model's outputs when the objective needs them;
- the logs: the objective's metrics averaged over the whole logging window and all processes;
- evaluation: the objective's loss, plain CE and avg_p_correct over the whole eval set, not a mean of batch means.
And, where it is exact, the loss head is fused (`fused_loss`): the [B, T, V] logits are never materialised. Where it
cannot apply (the model's head, or a statistic the objective needs that cannot be computed chunk by chunk),
`fused_loss: auto` says why in one log line and computes the loss unfused; `true` makes that an error.
Reliability (non-finite steps skipped, checkpoints marked complete) comes from `dftune.runtime.guards`, the fused
head from `dftune.runtime.fused_head`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from dftune.data.collate import packed_sample_ids
from dftune.errors import DftuneError
from dftune.losses import (
    REFRESH_STEPS,
    SEGMENTS,
    LossOutput,
    compute_objective,
    fused_linear_loss,
    get_objective,
    precomputable_objectives,
    unfusable_statistics,
)
from dftune.runtime.fused_head import FusedHead, fusable_head
from dftune.runtime.guards import GuardedUpdates
from dftune.runtime.metrics import MetricWindow, source_sums
from dftune.runtime.parallelism import parameter_sharding
from dftune.runtime.recent_policy import RecentPolicyForward
from dftune.runtime.reference_forward import ReferenceForward
from dftune.runtime.reference_logps import REF_LOGPS, with_reference_log_probs
from dftune.runtime.sequence_parallel import SequenceGroup, sequence_group, shard_attention, unsharded_attention

logger = logging.getLogger(__name__)


class ObjectiveTrainer(GuardedUpdates, Trainer):
    """Trainer whose loss is a dftune objective (`objective` in OBJECTIVES, with its settings by keyword; for an
    objective with a KL anchor or an importance ratio to the starting model, `reference` is the frozen reference
    model, or None to use the LoRA policy with its adapters disabled; PSFT's old policy is a snapshot kept here).
    `precompute_ref_log_probs`: run that reference once over the datasets before training (their `ref_logps`
    column), then drop it, for an objective that only needs log p_ref(target) (`Objective.precomputable`)."""

    # compute_loss returns a loss already divided by the global count: the Trainer must not divide it again.
    loss_is_scaled_for_ga = True
    # Sequence shards (`sequence_parallel_size`) attend causally; stage dllm's bidirectional models over everything.
    attends_causally = True

    def __init__(
        self,
        *args: Any,
        objective: str,
        objective_kwargs: dict[str, Any],
        fused_loss: str = "auto",
        fused_chunk_size: int | None = None,
        max_nonfinite_steps: int = 3,
        reference: nn.Module | None = None,
        source_names: Sequence[str] = (),
        precompute_ref_log_probs: bool = False,
        sequence_parallel_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sequence = self._sequence_group(sequence_parallel_size)
        self.source_names = list(source_names)  # several data sources: ce/<source> of each (source_ids in batches)
        self.objective = objective
        self.spec = get_objective(objective)
        self.objective_kwargs = objective_kwargs
        self.spec.resolve(self.spec.kwargs_at(objective_kwargs, 0))  # a wrong keyword fails before training
        self.unit = self.spec.normalise_by
        self._train_window = MetricWindow()
        self._eval_window = MetricWindow()
        self.trained_targets = 0  # target tokens of the applied steps on this process (the summary's tokens/s)
        self.init_guards(max_nonfinite_steps)
        self.reference: ReferenceForward | None = None
        if self.spec.needs_reference and self.spec.reference == "recent":
            if sharding := parameter_sharding(self):
                raise DftuneError(f"loss: {objective} snapshots the policy's parameters, of which {sharding} keeps "
                                  "only a shard per process: train it with DDP or DeepSpeed ZeRO-1/2 (drop fsdp, or "
                                  "use configs/deepspeed/zero2.json), or pick another loss")
            refresh = next(s.default for s in self.spec.settings if s.kwarg == REFRESH_STEPS)
            self.reference = RecentPolicyForward(self.model, int(objective_kwargs.get(REFRESH_STEPS, refresh)))
        elif self.spec.needs_reference:
            self.reference = ReferenceForward(self.model, None if reference is None else reference.to(self.args.device))
        if self.sequence is not None and self.reference is not None and self.reference.reference is not None:
            shard_attention(self.reference.reference, self.sequence)  # a separate frozen model runs on shards too
        del reference  # with precompute_ref_log_probs, `self.reference` then holds the only handle to a frozen copy
        if precompute_ref_log_probs:
            self._precompute_reference()
        self.fused_head: FusedHead | None = None
        self.fused_chunk_size = fused_chunk_size  # None: by device and free memory (losses.default_chunk_size)
        if fused_loss != "false":
            self.fused_head, reason = self._fusable()
            if self.fused_head is None and fused_loss == "true":
                raise DftuneError(f"fused_loss: true cannot apply: {reason}. Set fused_loss: auto or false")
            if self.fused_head is None:
                logger.info("fused_loss: auto uses the unfused loss head: %s", reason)

    def _precompute_reference(self) -> None:
        """The reference's `ref_logps` on the train and eval datasets, then the reference freed (LoRA: nothing to
        free, the policy is its own reference; full: the frozen copy deleted)."""
        if not self.spec.precomputable:
            raise DftuneError(f"precompute_ref_log_probs applies to loss: {', '.join(precomputable_objectives())} "
                              f"(the reference enters only as log p_ref of each target), not to loss: "
                              f"{self.objective} ({self.spec.not_precomputable()}): drop precompute_ref_log_probs")
        compute = lambda data: with_reference_log_probs(  # noqa: E731
            data, self.reference, batch_size=self.args.per_device_eval_batch_size, device=self.args.device)
        self.train_dataset = compute(self.train_dataset)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {name: compute(data) for name, data in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = compute(self.eval_dataset)
        logger.info("precompute_ref_log_probs: the reference (%s) ran once over the data; training runs without it",
                    self.reference.describe())
        self.reference = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _fusable(self) -> tuple[FusedHead | None, str]:
        """The head the fused loss can use, or (None, why not): the model's head, the objective's statistics and,
        with a KL anchor, the reference's head."""
        head, reason = fusable_head(self.model)
        missing = unfusable_statistics(self.spec)
        if head is not None and self.sequence is not None and not self.spec.per_token:
            head, reason = None, f"{self.objective} weighs whole samples, gathered over sequence shards unfused only"
        if head is not None and missing:
            head, reason = None, (f"objective {self.objective} needs {missing}, which the fused head cannot compute "
                                  "one chunk of logits at a time")
        if head is not None and self.reference is not None and self.reference.head is None:
            head, reason = None, f"the reference's output layer cannot be fused: {self.reference.reason}"
        if head is not None and self.reference is not None and self.reference.head.transform != head.transform:
            head, reason = None, "the reference transforms its logits differently from the model"
        return head, reason

    def _sequence_group(self, size: int) -> SequenceGroup | None:
        """`sequence_parallel_size`'s group, the model's attention sharded over it (or an error: never unsharded)."""
        group = sequence_group(size)
        if group is not None:
            self._attention_unsharded = shard_attention(self.model, group, causal=self.attends_causally)
        return group

    def shard_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's sequence shard of a collated micro-batch (`SequenceGroup.shard`)."""
        assert self.sequence is not None
        return self.sequence.shard(batch)

    def whole_sequences(self) -> AbstractContextManager[None]:
        """A context in which the model attends over whole sequences on this process alone (a sample the main
        process decodes), or nothing changes (no sequence parallelism)."""
        return nullcontext() if self.sequence is None else unsharded_attention(self.model, self._attention_unsharded)

    def batch_count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One collated micro-batch's share of the global count that normalises the loss (the objective's unit)."""
        if self.sequence is not None:  # a shard of shifted labels (`SequenceGroup.shard`); a sample counts once
            count = self.spec.local_count(batch["labels"], shift=False)
            return count if self.unit == "tokens" or self.sequence.rank == 0 else torch.zeros_like(count)
        return self.spec.local_count(batch["labels"], packed_sample_ids(batch))

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the dataset's `source_id` (the collator turns it into `source_ids`) and `ref_logps` through
        transformers' removal of the columns the model does not take. Transformers' private hook:
        tests/stages/test_source_metrics.py fails when it moves."""
        super()._set_signature_columns_if_needed()
        self._signature_columns += [name for name in ("source_id", REF_LOGPS) if name not in self._signature_columns]

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[override]
        """Replace transformers' token count by our own, summed over the accumulation window and processes."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        if self.sequence is not None:  # count this process's shards: summed over all processes, the global count
            batch_samples = [self.shard_batch(batch) for batch in batch_samples]
        count = sum(self.batch_count(b) for b in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batch_samples, count

    def record(self, out: LossOutput, *, training: bool, global_count: Any, eval_weight: int) -> torch.Tensor:
        """Add a call's metrics to its window; return the loss to backpropagate (or report, in evaluation)."""
        if self.sequence is not None:  # its forward has run: its attention went through the shards, or an error
            self.sequence.check_attended(self.model)
        if not training:
            self._eval_window.add(out, loss_weight=eval_weight)
            return out.loss
        if self.flag_nonfinite(out.loss):  # its update will be skipped: keep its metrics out of the logs
            return out.loss
        self._train_window.add(out)
        self.trained_targets += out.num_tokens
        if global_count is not None and self.args.average_tokens_across_devices:
            # DDP and DeepSpeed average gradients over processes; the global count already divides the sum.
            return out.loss * self.accelerator.num_processes
        return out.loss

    def compute_loss(  # type: ignore[override]
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        if self.sequence is not None and not model.training:  # training batches are sharded by get_batch_samples
            inputs = self.shard_batch(inputs)
        labels = inputs.pop("labels")
        source_ids = inputs.pop("source_ids", None)  # [B, T] per-position data source (dftune.data.collate)
        # Fused unless an evaluation asks for logits (compute_metrics); then `outputs` holds no logits.
        fused = self.fused_head is not None and not (return_outputs and self.compute_metrics is not None)
        kwargs = self.loss_kwargs(inputs, fused=fused)
        if REF_LOGPS in inputs:  # [B, T] precomputed reference log-probs (precompute_ref_log_probs)
            kwargs[REF_LOGPS] = inputs.pop(REF_LOGPS)
        # Training: normalise by the global count from get_batch_samples. Evaluation passes a token count whatever
        # the objective, so there we normalise per batch and let the window build the exact dataset-level mean.
        global_count = num_items_in_batch if model.training else None
        if fused:
            out, outputs = self._fused_objective(model, inputs, labels, global_count, kwargs), {}
        else:
            outputs = model(**inputs, use_cache=False)
            out = compute_objective(self.objective, outputs.logits, labels, global_count=global_count, **kwargs)
        eval_weight = out.num_tokens if self.unit == "tokens" else out.num_samples
        loss = self.record(out, training=model.training, global_count=global_count, eval_weight=eval_weight)
        if source_ids is not None and len(self.source_names) > 1:
            window = self._train_window if model.training else self._eval_window
            window.add_sums(source_sums(out, source_ids, self.source_names, shifted=self.sequence is not None))
        return (loss, outputs) if return_outputs else loss

    def loss_kwargs(self, inputs: dict[str, torch.Tensor], *, fused: bool) -> dict[str, Any]:
        """The objective's arguments for this batch: its settings at the current optimizer step, packed sample ids
        when it weighs whole samples, and the reference's outputs (hidden states and head when fused, else logits)
        when it has a KL anchor."""
        kwargs = self.spec.kwargs_at(self.objective_kwargs, self.state.global_step)
        if self.sequence is not None:
            kwargs["shift"] = False  # the shard's labels were shifted over the whole sequence
            if not self.spec.per_token:
                kwargs["whole"] = self.sequence.whole  # it weighs whole samples: the group's statistics
        # A sequence shard also has position_ids and no attention_mask, but one sample per row (packing is refused
        # under sequence parallelism), so only an unsharded batch can be packed.
        sample_ids = packed_sample_ids(inputs) if self.sequence is None else None
        if sample_ids is not None and SEGMENTS in self.spec.needs:
            kwargs["sample_ids"] = sample_ids
        if self.reference is not None:
            self.reference.refresh(self.state.global_step)
        if self.reference is not None and fused:
            kwargs["ref_hidden"], kwargs["ref_weight"] = self.reference.hidden_and_head(inputs)
        elif self.reference is not None:
            kwargs["ref_logits"] = self.reference.logits(inputs)
        return kwargs

    def _fused_objective(self, model, inputs, labels, global_count, kwargs) -> LossOutput:
        """The objective from the final hidden states and the head's weight, one chunk of logits at a time."""
        return self.fused_forward(model, inputs, lambda hidden, head: fused_linear_loss(
            hidden, head.head.weight, labels, objective=self.objective, global_count=global_count,
            chunk_size=self.fused_chunk_size, logit_transform=head.transform, **kwargs,
        ))  # fmt: skip

    def fused_forward(
        self, model: nn.Module, inputs: dict[str, torch.Tensor],
        loss_of: Callable[[torch.Tensor, FusedHead], LossOutput],
    ) -> LossOutput:
        """`model(**inputs)` with the output layer computing `loss_of(final hidden states, head)` instead of logits."""
        head = self.fused_head
        with head.computes(lambda hidden: loss_of(hidden, head)) as results:
            outputs = model(**inputs, use_cache=False)
        # Backward goes through the head's output as the model returned it: DeepSpeed ZeRO-3 hooks that tensor to
        # gather the partitioned weight again before the head's backward.
        return dataclasses.replace(results[-1], loss=outputs.logits)

    def targets_trained(self) -> int:
        """Target tokens trained in this session over every process (every process must call it)."""
        if self.accelerator.num_processes == 1:
            return self.trained_targets
        count = torch.tensor([self.trained_targets], dtype=torch.float64, device=self.accelerator.device)
        return int(self.accelerator.reduce(count, reduction="sum").item())

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
