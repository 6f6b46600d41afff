"""`precompute_ref_log_probs` for an objective whose reference is the frozen starting model and enters only through
log p_ref(target) (`Objective.precomputable`: iw-SFT): the reference runs once over the data before step 1.

Each record gets a `ref_logps` column aligned with its labels: ``ref_logps[t] = log_softmax(ref_logits[t - 1])
[labels[t]]`` where labels[t] != -100, NaN elsewhere. The collator places it as it places the labels (padding or
packing), and the objective reads it instead of running the reference (`unfused.objective_loss`'s `ref_logps`).
The column lives in memory for this run; it is not written into the data cache.
"""

from __future__ import annotations

import logging

import torch
from datasets import Dataset

from dftune.data.collate import DataCollatorForChat
from dftune.losses import IGNORE_INDEX, shift_labels
from dftune.losses.chunks import target_statistics
from dftune.losses.fused import default_chunk_size
from dftune.runtime.reference_forward import ReferenceForward

logger = logging.getLogger(__name__)

REF_LOGPS = "ref_logps"
"""The dataset column, and the batch key the collator makes of it."""


@torch.no_grad()
def label_log_probs(reference: ReferenceForward, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """[B, T] float64 log p_ref(labels[b, t]) from the reference's prediction at t - 1, NaN where there is no target.

    Equals ``log_softmax(reference.logits(inputs)[:, :-1].double(), -1).gather(-1, labels[:, 1:, None])`` at the
    valid labels, shifted right by one; through the fused head (one [chunk, V] block at a time, never [B, T, V]
    logits) where the reference's head allows it.
    """
    targets = shift_labels(labels).flatten()  # [B*T]: targets[t] = labels[t + 1]
    index = (targets != IGNORE_INDEX).nonzero().squeeze(1)  # [N]
    target = targets.index_select(0, index)
    if reference.head is not None:
        hidden, weight = reference.hidden_and_head(inputs)
        chunk_size = default_chunk_size(weight.shape[0], hidden.device)
        logp = -target_statistics(hidden, weight, target, index, chunk_size, reference.head.transform).ce  # [N]
    else:  # a head the fused path cannot take: its logits, as the live reference would give them
        logits = reference.logits(inputs).flatten(0, 1).index_select(0, index).float()  # [N, V]
        logp = torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
    flat = torch.full(targets.shape, float("nan"), dtype=torch.float64, device=labels.device)
    flat[index] = logp.double()
    aligned = torch.full(labels.shape, float("nan"), dtype=torch.float64, device=labels.device)
    aligned[:, 1:] = flat.view(labels.shape)[:, :-1]  # back onto the labels they predict
    return aligned


def with_reference_log_probs(
    dataset: Dataset, reference: ReferenceForward, *, batch_size: int, device: torch.device
) -> Dataset:
    """`dataset` plus its `ref_logps` column (replaced if there): the reference over padded batches of
    `batch_size` records with an attention mask, so each record's values are those of the record alone."""
    collate = DataCollatorForChat(pad_token_id=0)  # padding is masked out and labelled -100: its id does not matter
    values: list[list[float]] = []
    for start in range(0, len(dataset), batch_size):
        part = dataset[start : start + batch_size]
        features = [{"input_ids": ids, "labels": labels} for ids, labels in zip(part["input_ids"], part["labels"])]
        batch = {name: tensor.to(device) for name, tensor in collate(features).items()}
        labels = batch.pop("labels")
        logps = label_log_probs(reference, batch, labels).cpu()
        values.extend(logps[row, : len(f["input_ids"])].tolist() for row, f in enumerate(features))
    if REF_LOGPS in dataset.column_names:
        dataset = dataset.remove_columns(REF_LOGPS)
    return dataset.add_column(REF_LOGPS, values)
