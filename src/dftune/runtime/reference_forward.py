"""The frozen reference an objective with a KL anchor (ASFT) compares the policy with, run on a training batch.

Two set-ups (`dftune.models.reference.frozen_reference` loads the second):
- LoRA: the policy itself with its adapters disabled: the base weights, no second copy in memory;
- a separate frozen model (a copy of the starting model for full fine-tuning, or `ref_model_name_or_path`).
Both run without gradient. For the fused head the reference gives its final hidden states and output layer (its
head returns its input, so no [B, T, V] logits exist); otherwise its logits.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from peft import PeftModel
from torch import nn

from dftune.errors import DftuneError
from dftune.runtime.fused_head import fusable_head


class ReferenceForward:
    """`logits(inputs)` or `hidden_and_head(inputs)` of the reference, for a policy and an optional separate model."""

    def __init__(self, policy: nn.Module, reference: nn.Module | None) -> None:
        if reference is None and not isinstance(policy, PeftModel):
            raise DftuneError("a KL anchor needs a reference: train with finetuning_type: lora (the base model with "
                              "the adapters disabled), or give a frozen reference model")
        self.policy, self.reference = policy, reference
        self.head, self.reason = fusable_head(reference if reference is not None else policy)

    def describe(self) -> str:
        return "the base model with the LoRA adapters disabled" if self.reference is None else "a frozen model"

    def refresh(self, step: int) -> None:
        """Before optimizer step `step`'s forward passes: a frozen reference never changes."""

    @contextmanager
    def _model(self) -> Iterator[nn.Module]:
        """The reference, in eval mode, without gradient (the policy with its adapters disabled, or the model)."""
        model = self.reference if self.reference is not None else self.policy
        disabled = self.policy.disable_adapter() if self.reference is None else nullcontext()
        was_training = model.training
        model.eval()  # no dropout in the reference
        try:
            with torch.no_grad(), disabled:
                yield model
        finally:
            model.train(was_training)

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._model() as model:
            return model(**inputs, use_cache=False).logits

    def hidden_and_head(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states [B, T, H], output layer [V, H]) of the reference; its head must be fusable."""
        if self.head is None:
            raise DftuneError(f"the reference's loss head cannot be fused: {self.reason}")
        with self._model() as model, self.head.returns_input():
            hidden = model(**inputs, use_cache=False).logits
            return hidden, self.head.head.weight.detach()  # inside: a snapshot's head (`recent_policy.py`)
