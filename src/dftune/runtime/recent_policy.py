"""PSFT's old policy p_old: the policy as it was at its last refresh, every `refresh_steps` optimizer steps.

No second model: a snapshot of the trainable parameters only (with LoRA, the adapters: a few MiB; with full
fine-tuning, one copy of the weights, as a frozen reference would cost). For the old policy's forward the
parameters' storage is swapped with the snapshot's and swapped back afterwards (no copy per step). Not for
sharded parameters (DeepSpeed ZeRO-3, FSDP), whose local storage is only a shard.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from dftune.runtime.fused_head import fusable_head
from dftune.runtime.reference_forward import ReferenceForward


class RecentPolicyForward(ReferenceForward):
    """`logits(inputs)` or `hidden_and_head(inputs)` of the policy with its trainable weights as they were at the
    last `refresh`."""

    def __init__(self, policy: nn.Module, refresh_steps: int) -> None:  # no super(): there is no other model
        self.policy, self.reference, self.refresh_steps = policy, None, refresh_steps
        self.head, self.reason = fusable_head(policy)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.snapshot: list[torch.Tensor] = []
        self.taken_at: int | None = None

    def describe(self) -> str:
        return f"the policy as it was at most {self.refresh_steps} optimizer steps ago"

    def refresh(self, step: int) -> None:
        """Take the snapshot at the first call (also after a resume) and at every multiple of `refresh_steps`."""
        if self.taken_at is not None and (step == self.taken_at or step % self.refresh_steps):
            return
        with torch.no_grad():
            self.snapshot = [p.detach().clone() for p in self.params]
        self.taken_at = step

    @contextmanager
    def _model(self) -> Iterator[nn.Module]:
        """The policy with the snapshot's weights, in eval mode, without gradient."""
        live = [p.data for p in self.params]
        was_training = self.policy.training
        self.policy.eval()
        try:
            for param, old in zip(self.params, self.snapshot):
                param.data = old
            with torch.no_grad():
                yield self.policy
        finally:
            for param, data in zip(self.params, live):
                param.data = data
            self.policy.train(was_training)
