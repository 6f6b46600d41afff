"""Stage dllm: `ObjectiveTrainer` with the masked-diffusion loss on batches noised by `DiffusionCollator`.

What changes from stage sft, and why:
- the count that normalises the loss is the global number of *answer* tokens (masked or not, EOS padding
  included) over the accumulation steps and processes, as LLaDA's SFT loss divides by the answer length:
  then batch 1 x accumulation 8 and batch 8 x accumulation 1 give the same gradient;
- the model sees the noised input_ids only (no attention_mask: attention covers the whole row) and its
  logits are not shifted;
- the loss head is never fused (the fused path computes the causal objectives).
The metric window, evaluation and everything else are ObjectiveTrainer's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dftune.losses.diffusion import diffusion_objective
from dftune.train.trainer import ObjectiveTrainer


class DiffusionTrainer(ObjectiveTrainer):
    """Trainer for masked-diffusion SFT; `objective` is `sft` (the plain loss) or `dft` (experimental)."""

    def __init__(self, *args: Any, objective: str, dft_alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, objective=objective, objective_kwargs={}, fused_loss="false", **kwargs)
        self.dft_alpha = dft_alpha
        # The collator needs labels, which remote-code models (LLaDA) do not take in forward: keep the columns.
        self._signature_columns = ["input_ids", "labels"]

    def batch_count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer tokens of a micro-batch, masked or not: LLaDA's SFT loss divides by the answer length."""
        return batch["answer_mask"].sum()

    def compute_loss(  # type: ignore[override]
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        labels, t, answer_mask = inputs["labels"], inputs["t"], inputs["answer_mask"]
        # Training: the global count from get_batch_samples. Evaluation: this batch's count, and the window
        # weighs each batch's loss by it, which gives the exact mean over the eval set.
        local_count = answer_mask.sum()
        count = num_items_in_batch if model.training and num_items_in_batch is not None else local_count
        outputs = model(input_ids=inputs["input_ids"])
        out = diffusion_objective(
            self.objective, outputs.logits, labels, t, num_answer_tokens=count, alpha=self.dft_alpha
        )
        global_count = num_items_in_batch if model.training else None
        loss = self.record(out, training=model.training, global_count=global_count, eval_weight=int(local_count))
        if not model.training and self.compute_metrics is None:
            outputs = {}  # nobody reads eval logits: do not let the evaluation loop gather [B, L, V]
        return (loss, outputs) if return_outputs else loss
