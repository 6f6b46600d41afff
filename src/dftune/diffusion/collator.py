"""Forward noising for masked-diffusion SFT (LLaDA, Nie et al. 2025, Sec. 2.3 and Appendix B.1).

From tokenised conversations (input_ids, and labels with -100 on every non-answer token) to a noised batch:

- answer = the labelled tokens. Each row ends at its last answer token (the template's trailing newline
  after the end-of-turn token is dropped), then is padded with EOS to the longest row; those EOS are answer
  tokens too, so the model learns to fill the rest of a fixed-length reply with EOS (LLaDA's SFT recipe);
- per sample, t = (1 - eps) * u + eps with u ~ U(0, 1); each answer token is replaced by the mask token with
  probability t; prompt tokens (and earlier user turns of a multi-turn record) are never masked;
- no attention_mask: every position attends to the whole row, padding included.

Batch out: input_ids [B, L] (noised), labels [B, L] (the original token where masked, else -100),
t [B] (float32), answer_mask [B, L] (bool; its sum is the loss's normaliser, see `DiffusionTrainer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dftune.losses import IGNORE_INDEX


@dataclass
class DiffusionCollator:
    """`collator(features) -> dict[str, Tensor]` for features holding `input_ids` and `labels` lists."""

    mask_token_id: int
    eos_token_id: int
    eps: float = 1e-3
    generator: torch.Generator | None = None
    """Random source for t and the masks (tests pass a seeded one; training uses torch's global RNG,
    which the Trainer seeds)."""

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self._trim(feature) for feature in features]
        longest = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), longest), self.eos_token_id, dtype=torch.long)
        answer_mask = torch.ones((len(rows), longest), dtype=torch.bool)  # EOS padding is answer
        for row, (ids, answer) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            answer_mask[row, : len(ids)] = answer
        t = self.sample_t(len(rows))
        u = torch.rand(input_ids.shape, generator=self.generator)  # [B, L]
        masked = (u < t[:, None]) & answer_mask
        return {
            "input_ids": input_ids.masked_fill(masked, self.mask_token_id),
            "labels": input_ids.masked_fill(~masked, IGNORE_INDEX),
            "t": t,
            "answer_mask": answer_mask,
        }

    def sample_t(self, batch_size: int) -> torch.Tensor:
        """[B] mask ratios in [eps, 1): t = (1 - eps) * u + eps, u ~ U(0, 1)."""
        u = torch.rand(batch_size, generator=self.generator)
        return (1.0 - self.eps) * u + self.eps

    def _trim(self, feature: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, answer) of one sample, cut after its last answer token."""
        ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
        answer = torch.as_tensor(feature["labels"], dtype=torch.long) != IGNORE_INDEX
        if not answer.any():
            return ids, answer  # no answer left after truncation: context only, nothing to learn
        end = int(answer.nonzero()[-1]) + 1
        return ids[:end], answer[:end]
