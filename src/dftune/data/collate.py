"""Batch tokenised samples: pad to the longest, or pack them into as few rows as fit.

Padded (B x L): input_ids (pad_token_id), attention_mask (0 on padding), labels (-100 on padding).
Packed (R x L', R <= B, L' <= L): samples placed first-fit, longest first, into rows no longer than the batch's
longest sample; input_ids, labels, position_ids restarting at 0 per sample, and no attention_mask. Rows are
capped at the longest sample because attention without a varlen kernel (sdpa, eager on CPU) costs the square of
the row length: one row of every sample would cost more than padding. A short row's tail is filled with pad
tokens whose positions continue the row's last sample (so they form no sample of their own), labelled -100:
causal attention never lets a real token see them. Without attention_mask, transformers' mask builder (masking_utils.find_packed_sequence_indices) then derives a
block-diagonal causal mask from the position_ids, so samples do not attend to each other. The label of each
sample's first token is -100, so the last token of one sample is never trained to predict the next sample.
Transformers only looks for packed sequences when no KV cache is passed, and a model whose config has
use_cache=True builds one even in training: call `configure_packing(model.config)` before training.
A feature's `ref_logps` (the reference's log p of each label, `precompute_ref_log_probs`) becomes a float64 [B, T]
column placed exactly as the labels are (NaN where they are -100 by padding or packing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from transformers import PreTrainedConfig

from dftune.data.encode import IGNORE_INDEX
from dftune.errors import DftuneError

# Attention implementations that separate packed samples by position_ids when attention_mask is None.
# eager and sdpa: loss and gradients checked in tests/data/test_collate.py; flex_attention: same mask
# builder, forward checked (no CPU backward); flash_attention_2/3: varlen from position_ids, needs a GPU.
PACKING_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass
class DataCollatorForChat:
    """`collator(features) -> dict[str, Tensor]` for features holding `input_ids` and `labels` lists (and, from
    `prepare_datasets`, `source_id`, which becomes `source_ids` [B, T])."""

    pad_token_id: int
    packing: bool = False

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._pack(features) if self.packing else self._pad(features)
        if features and "source_id" in features[0]:
            batch["source_ids"] = self._source_ids(features, batch)
        return batch

    def _source_ids(self, features: Sequence[dict[str, Any]], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, T] the `source_id` of the sample at each position (-1 on padding): for ce/<source> in the logs. The
        trainer pops it before the model call; packed rows take each position's sample by the same placement."""
        ids = torch.full_like(batch["input_ids"], -1)
        if not self.packing:
            for row, feature in enumerate(features):
                ids[row, : len(feature["input_ids"])] = int(feature["source_id"])
            return ids
        for r, row in enumerate(pack_rows([len(f["input_ids"]) for f in features])):
            start = 0
            for i in row:
                n = len(features[i]["input_ids"])
                ids[r, start : start + n] = int(features[i]["source_id"])
                start += n
        return ids

    def _pad(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"])
            attention_mask[row, :n] = 1
        rows = [[i] for i in range(len(features))]
        columns = _label_columns(features, rows, longest, packed=False)
        return {"input_ids": input_ids, "attention_mask": attention_mask, **columns}

    def _pack(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = pack_rows([len(f["input_ids"]) for f in features])
        width = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = len(features[i]["input_ids"])
                input_ids[r, start : start + n] = torch.as_tensor(features[i]["input_ids"])
                position_ids[r, start : start + n] = torch.arange(n)
                start += n
            # The pad tail continues the last sample's positions: part of it, never a sample of its own.
            last = position_ids[r, start - 1] if start else -1
            position_ids[r, start:] = torch.arange(last + 1, last + 1 + width - start)
        columns = _label_columns(features, rows, width, packed=True)
        return {"input_ids": input_ids, "position_ids": position_ids, **columns}


LABEL_COLUMNS = {"labels": (IGNORE_INDEX, torch.long), "ref_logps": (float("nan"), torch.float64)}
"""The per-label columns of a feature and their (fill, dtype): placed alike, so `ref_logps` stays on its labels."""


def packed_sample_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """[B, T] sample ids of a padding-free packed batch (position_ids and no attention_mask: each sample's positions
    restart at 0), numbered across the batch; else None (one sample per row)."""
    if "position_ids" in batch and "attention_mask" not in batch:
        return torch.cumsum((batch["position_ids"] == 0).flatten(), 0).view_as(batch["position_ids"]) - 1
    return None


def _label_columns(
    features: Sequence[dict[str, Any]], rows: list[list[int]], width: int, *, packed: bool
) -> dict[str, torch.Tensor]:
    """labels (and ref_logps, when the features have them) [len(rows), width]: the samples of each row side by side,
    fill after them. Packed, each sample's first position is filled too, so the last token of one sample is never
    trained to predict the next."""
    columns = {}
    for name, (fill, dtype) in LABEL_COLUMNS.items():
        if name not in features[0]:
            continue
        column = torch.full((len(rows), width), fill, dtype=dtype)
        for r, row in enumerate(rows):
            start, first = 0, int(packed)
            for i in row:
                values = features[i][name]
                column[r, start + first : start + len(values)] = torch.as_tensor(values[first:], dtype=dtype)
                start += len(values)
        columns[name] = column
    return columns


def pack_rows(lengths: Sequence[int]) -> list[list[int]]:
    """First-fit decreasing: sample indices grouped into rows whose total length is at most max(lengths)."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([])
            room.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= lengths[i]
    return rows


def configure_packing(config: PreTrainedConfig) -> None:
    """Make a model's config safe for packed batches: refuse attention that would mix samples, disable the cache.

    With use_cache=True transformers creates a KV cache in forward, skips the packed-sequence detection and
    lets every sample attend to the samples before it in the row (measured: loss and gradients differ).
    """
    attn_implementation = config._attn_implementation
    if attn_implementation not in PACKING_ATTENTION:
        raise DftuneError(
            f"packing: true needs an attention implementation that separates packed samples by position_ids "
            f"({', '.join(PACKING_ATTENTION)}); the model uses {attn_implementation!r}. "
            "Set packing: false or choose one of these."
        )
    config.use_cache = False
