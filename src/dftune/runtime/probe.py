"""`dftune probe`: does DFT suit this data? One forward pass of the starting model, no training.

For each target token of (a sample of) the training data: the model's probability of it and its predictive
entropy, computed through the fused head's chunking (the final hidden states of the valid targets times the output
layer, one [chunk, V] block at a time; the [N, V] logits never exist). Then the shares of targets under p = 0.01
and 0.1 (the ones DFT's weight sg(p) starves) overall, per data source and per token kind, the rarest frequent
tokens, and a verdict line. Stage sft: causal, shifted targets. Stage dllm: a fixed random share (`mask_ratio`) of
each answer's tokens masked, the masked ones are the targets (shifted only for a model turned from a causal one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dftune.errors import DftuneError
from dftune.losses import IGNORE_INDEX, shift_labels
from dftune.losses.chunks import target_statistics
from dftune.runtime.fused_head import fusable_head

THRESHOLDS = (0.01, 0.1)
KINDS = ("special", "format", "text")
"""special: the tokenizer's special tokens; format: no letter or digit (whitespace, punctuation, symbols such as
`×`); text: the rest."""
LOG10_P_BINS = [-8.0 + 0.5 * i for i in range(17)]  # histogram edges of log10 p, [-8, 0]


@dataclass
class Targets:
    """The probed target tokens, [N] each."""

    prob: torch.Tensor
    entropy: torch.Tensor
    token: torch.Tensor
    source: torch.Tensor


def token_kind(tokenizer: PreTrainedTokenizerBase, token: int) -> str:
    if token in set(tokenizer.all_special_ids):
        return "special"
    text = tokenizer.decode([token])
    return "text" if any(ch.isalnum() for ch in text) else "format"


@torch.no_grad()
def probe_targets(
    model: nn.Module, samples: Sequence[dict[str, Any]], *, pad_token_id: int, stage: str = "sft",
    mask_token_id: int | None = None, mask_ratio: float = 0.5, shift: bool | None = None, batch_size: int = 8,
    chunk_size: int = 64, seed: int = 0,
) -> Targets:
    """p(target) and the predictive entropy of every target of `samples` (dicts with input_ids, labels, source_id)."""
    head, reason = fusable_head(model)
    if head is None:
        raise DftuneError(f"dftune probe goes through the fused loss head, which cannot apply to this model: {reason}")
    if stage == "dllm" and mask_token_id is None:
        raise DftuneError("dftune probe --stage dllm needs a mask token: the model config's mask_token_id, the "
                          "tokenizer's mask token, or --mask_token_id")
    shift = stage == "sft" if shift is None else shift
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.eval()
    parts: list[Targets] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        width = max(len(s["input_ids"]) for s in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, s in enumerate(batch):
            n = len(s["input_ids"])
            ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(s["input_ids"]), torch.tensor(s["labels"]), 1
        if stage == "dllm":  # mask a share of the answer tokens; they are the targets
            masked = (labels != IGNORE_INDEX) & (torch.rand(labels.shape, generator=generator) < mask_ratio)
            ids, labels = ids.masked_fill(masked, mask_token_id), labels.masked_fill(~masked, IGNORE_INDEX)
        targets = (shift_labels(labels) if shift else labels).flatten()
        index = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        with head.returns_input():
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        weight = head.head.weight.detach()
        target = targets[index].to(device)
        chunks = target_statistics(hidden, weight, target, index.to(device), chunk_size, head.transform)
        source = torch.tensor([s.get("source_id", 0) for s in batch])[index // width]
        parts.append(Targets(torch.exp(-chunks.ce).double().cpu(), chunks.entropy.double().cpu(), target.cpu(), source))
    if not parts or sum(p.prob.numel() for p in parts) == 0:
        raise DftuneError("dftune probe found no target token in the data (every label is -100)")
    return Targets(*(torch.cat([getattr(p, f) for p in parts]) for f in ("prob", "entropy", "token", "source")))


def shares(prob: torch.Tensor) -> dict[str, float]:
    """The share of targets under each threshold, and how many there are."""
    return {"targets": int(prob.numel()), **{f"p<{t:g}": float((prob < t).double().mean()) for t in THRESHOLDS}}


def summarise(targets: Targets, tokenizer: PreTrainedTokenizerBase, source_names: Sequence[str], *,
              min_count: int = 5, top: int = 10) -> dict[str, Any]:  # fmt: skip
    """The probe's JSON: histograms, shares overall / per source / per token kind, rarest frequent tokens, verdict."""
    kinds = {int(t): token_kind(tokenizer, int(t)) for t in torch.unique(targets.token)}
    kind_of = [kinds[int(t)] for t in targets.token]
    per_kind = {k: shares(targets.prob[[kind == k for kind in kind_of]]) for k in KINDS if k in kind_of}
    per_source = {name: shares(targets.prob[targets.source == i]) for i, name in enumerate(source_names)
                  if bool((targets.source == i).any())}  # fmt: skip
    log_p = torch.log10(targets.prob.clamp(min=1e-8))
    counts = torch.histc(log_p, bins=len(LOG10_P_BINS) - 1, min=LOG10_P_BINS[0], max=LOG10_P_BINS[-1])
    top_entropy = max(1.0, math.ceil(float(targets.entropy.max())))
    entropy_counts = torch.histc(targets.entropy, bins=20, min=0.0, max=top_entropy)
    rarest = []
    for token in torch.unique(targets.token):
        probs = targets.prob[targets.token == token]
        if probs.numel() >= min_count:
            rarest.append({"token": int(token), "text": tokenizer.decode([int(token)]), "kind": kinds[int(token)],
                           "count": int(probs.numel()), "median_p": float(probs.median()),
                           "mean_p": float(probs.mean())})  # fmt: skip
    rarest.sort(key=lambda r: r["median_p"])
    overall = shares(targets.prob)
    return {
        "overall": overall, "per_source": per_source, "per_kind": per_kind, "rarest_frequent_tokens": rarest[:top],
        "histogram_log10_p": {"edges": LOG10_P_BINS, "counts": [int(c) for c in counts]},
        "histogram_entropy": {"edges": [top_entropy * i / 20 for i in range(21)],
                              "counts": [int(c) for c in entropy_counts]},
        "mean_p": float(targets.prob.mean()), "mean_entropy": float(targets.entropy.mean()),
        "verdict": verdict(overall, rarest[:3]),
    }


def verdict(overall: dict[str, float], rarest: list[dict[str, Any]]) -> str:
    """One plain-language line: how much DFT's weights would starve, and what to do about it."""
    starved, low = overall["p<0.01"], overall["p<0.1"]
    names = ", ".join(f"{r['text']!r} (p {r['median_p']:.3g})" for r in rarest if r["median_p"] < 0.1)
    tail = f"; the rarest frequent targets: {names}" if names else ""
    if starved >= 0.02:
        return (f"{starved:.1%} of target tokens under p = 0.01: DFT alpha 1 will leave them almost untrained; "
                f"consider alpha <= 0.7, dft_min_weight, or eaft{tail}")
    if low >= 0.2:
        return (f"{low:.1%} of target tokens under p = 0.1 ({starved:.1%} under 0.01): DFT alpha 1 learns them "
                f"slowly; a linear dft_alpha_schedule or dft_min_weight helps{tail}")
    return f"only {starved:.1%} of target tokens under p = 0.01 and {low:.1%} under 0.1: DFT suits this data{tail}"
