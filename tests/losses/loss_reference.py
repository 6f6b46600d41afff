"""Straightforward reference implementations, written from the formulas with loops, for the loss tests.

Each works on float64 logits and returns (loss, metrics); nothing here is vectorised or clever.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def targets_by_row(logits: Tensor, labels: Tensor) -> list[list[tuple[Tensor, Tensor, bool]]]:
    """Per row, in order, (ce, logp, argmax == target, predictive entropy) of each target.

    logits[b, t] predicts labels[b, t + 1].
    """
    rows = []
    for b in range(labels.shape[0]):
        row = []
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            logp = torch.log_softmax(logits[b, t], dim=-1)[y]
            row.append((-logp, logp, int(logits[b, t].detach().argmax()) == y, entropy_of(logits[b, t].tolist())))
        rows.append(row)
    return rows


def token_metrics(tokens: list[tuple[Tensor, Tensor, bool]]) -> dict[str, float]:
    if not tokens:
        return {"avg_p_correct": 0.0, "token_accuracy": 0.0, "ce": 0.0, "entropy": 0.0}
    return {
        "entropy": sum(entropy for *_, entropy in tokens) / len(tokens),
        "avg_p_correct": sum(math.exp(float(logp.detach())) for _, logp, *_ in tokens) / len(tokens),
        "token_accuracy": sum(ok for _, _, ok, *_ in tokens) / len(tokens),
        "ce": sum(float(ce.detach()) for ce, *_ in tokens) / len(tokens),
    }


def dft(
    logits: Tensor, labels: Tensor, alpha: float = 1.0, num_items: int | None = None, power: float = 1.0,
    min_weight: float = 0.0,
):
    """sum_i CE_i * max(alpha * sg(p_i) ** power + 1 - alpha, min_weight) / N; alpha = 0 is SFT."""
    tokens = [tok for row in targets_by_row(logits, labels) for tok in row]
    n = len(tokens) if num_items is None else num_items
    weights = [max(alpha * math.exp(float(logp.detach())) ** power + 1 - alpha, min_weight) for _, logp, *_ in tokens]
    loss = sum(ce * w for (ce, *_), w in zip(tokens, weights)) / n
    return loss + 0 * logits.sum(), token_metrics(tokens) | {"mean_token_weight": mean(weights)}


def lowest_group_confidence(logps: list[float], group_size: int) -> float:
    if not logps:
        return 0.0
    width = min(group_size, len(logps))
    means = [sum(logps[j : j + width]) / width for j in range(len(logps) - width + 1)]
    return min(1.0, math.exp(min(means)))


def bft(
    logits: Tensor, labels: Tensor, group_size: int = 256, gamma: float = 1.0, num_samples: int | None = None
):
    """Per row: DFT mean over its targets (0 if none) times 1 - p_conf ** gamma, summed, / S."""
    rows = targets_by_row(logits, labels)
    total = 0 * logits.sum()
    weights, confs = [], []
    for row in rows:
        p_conf = lowest_group_confidence([float(logp.detach()) for _, logp, *_ in row], group_size)
        weight = 1.0 - p_conf**gamma
        weights.append(weight)
        confs.append(p_conf)
        if row:
            total = total + weight * sum(ce * torch.exp(logp.detach()) for ce, logp, *_ in row) / len(row)
    s = len(rows) if num_samples is None else num_samples
    metrics = token_metrics([tok for row in rows for tok in row])
    metrics |= {"bft_sample_weight": sum(weights) / len(rows), "bft_min_group_conf": sum(confs) / len(rows)}
    masses = [w * mean([math.exp(float(logp.detach())) for _, logp, *_ in row]) for w, row in zip(weights, rows)]
    metrics["mean_token_weight"] = sum(masses) / len(rows)  # a mean over samples: sum_b s_b mean_b(p) / S
    return total / s, metrics


def masked_diffusion(logits: Tensor, labels: Tensor, t: Tensor, num_answer_tokens: int):
    """sum over masked positions (no shift) of CE / t_b, / num_answer_tokens."""
    total = 0 * logits.sum()
    tokens = []
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1]):
            y = int(labels[b, i])
            if y == -100:
                continue
            logp = torch.log_softmax(logits[b, i], dim=-1)[y]
            total = total - logp / t[b]
            tokens.append((-logp, logp, int(logits[b, i].argmax()) == y, entropy_of(logits[b, i].tolist())))
    return total / num_answer_tokens, token_metrics(tokens) | {"mean_token_weight": 1.0 if tokens else 0.0}


def make_batch(
    batch: int, length: int, vocab: int, *, seed: int = 0, scale: float = 1.0, empty_row: int | None = 1
) -> tuple[Tensor, Tensor]:
    """logits [B, T, V] float64 leaf (scale 50 makes very confident predictions) and labels [B, T] whose
    labelled spans alternate with ignored ones (several turns per row); row `empty_row` has no target."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64) * scale).requires_grad_()
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    span = torch.randint(2, 5, (batch, length), generator=gen)  # turn lengths
    for b in range(batch):
        labelled, t = bool(b % 2), 0
        while t < length:
            if not labelled:
                labels[b, t : t + int(span[b, t])] = -100
            t, labelled = t + int(span[b, t]), not labelled
    if empty_row is not None and empty_row < batch:
        labels[empty_row] = -100
    return logits, labels


def eaft(logits: Tensor, labels: Tensor, alpha: float = 1.0, top_k: int = 20, num_items: int | None = None):
    """sum_i CE_i * (H_i / 3) ** alpha / N, H_i the entropy of the softmax of the top_k logits at target i."""
    total, tokens, weights = 0 * logits.sum(), [], []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            row = logits[b, t]
            top = sorted((float(v) for v in row.detach()), reverse=True)[: min(top_k, row.numel())]
            weights.append((entropy_of(top) / 3.0) ** alpha)
            logp = torch.log_softmax(row, dim=-1)[y]
            total = total - logp * weights[-1]
            tokens.append((-logp, logp, int(row.detach().argmax()) == y, entropy_of(row.tolist())))
    n = len(tokens) if num_items is None else num_items
    loss = total / max(n, 1) if num_items is None else total / n
    return loss, token_metrics(tokens) | {"mean_token_weight": mean(weights)}


def mean(values: list[float]) -> float:
    """The mean, 0.0 for no values (as the metrics of a call without targets)."""
    return sum(values) / len(values) if values else 0.0


def entropy_of(logits: list[float]) -> float:
    """-sum q log q of q = softmax(logits), written relative to the largest logit m so that nearly one-hot rows
    keep their relative precision: with d = z - m and r = sum of exp(d) over the other logits,
    H = log(1 + r) - sum_other(exp(d) * d) / (1 + r)."""
    m = max(logits)
    rest = list(logits)
    rest.remove(m)
    r = sum(math.exp(v - m) for v in rest)
    return math.log1p(r) - sum(math.exp(v - m) * (v - m) for v in rest) / (1 + r)


def reference_model(name: str, hidden: Tensor, vocab: int, seed: int = 11) -> tuple[dict, dict]:
    """For an objective that compares with a reference model (KL term): a random reference's final hidden states
    and output layer, as (unfused keyword arguments: ref_logits, fused ones: ref_hidden and ref_weight);
    ({}, {}) for every other objective."""
    from dftune.losses import OBJECTIVES

    if not OBJECTIVES[name].needs_reference:
        return {}, {}
    gen = torch.Generator().manual_seed(seed)
    ref_hidden = torch.randn(*hidden.shape[:-1], 5, generator=gen, dtype=hidden.dtype)
    ref_weight = torch.randn(vocab, 5, generator=gen, dtype=hidden.dtype)
    return {"ref_logits": ref_hidden @ ref_weight.T}, {"ref_hidden": ref_hidden, "ref_weight": ref_weight}


def asft(logits: Tensor, labels: Tensor, ref_logits: Tensor, alpha: float = 0.1, num_items: int | None = None):
    """sum_i CE_i * sg(p_i) / N + alpha * sum_i KL(p_ref_i || p_i) / N, KL summed over the whole vocabulary."""
    total, tokens, kls = 0 * logits.sum(), [], []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            logp = torch.log_softmax(logits[b, t], dim=-1)
            ref_logp = torch.log_softmax(ref_logits[b, t], dim=-1)
            kl = sum(torch.exp(ref_logp[v]) * (ref_logp[v] - logp[v]) for v in range(logp.numel()))
            total = total - logp[y] * torch.exp(logp[y].detach()) + alpha * kl
            kls.append(float(kl.detach()))
            tokens.append((-logp[y], logp[y], int(logits[b, t].detach().argmax()) == y,
                           entropy_of(logits[b, t].tolist())))
    n = len(tokens) if num_items is None else num_items
    metrics = token_metrics(tokens) | {"asft_kl": mean(kls), "mean_token_weight": mean([math.exp(float(lp.detach())) for _, lp, *_ in tokens])}
    return total / max(n, 1), metrics


def chord(logits: Tensor, labels: Tensor, num_items: int | None = None):
    """CHORD-phi: sum_i CE_i * sg(p_i (1 - p_i)) / N."""
    tokens = [tok for row in targets_by_row(logits, labels) for tok in row]
    n = len(tokens) if num_items is None else num_items
    weights = [math.exp(float(logp.detach())) * (1.0 - math.exp(float(logp.detach()))) for _, logp, *_ in tokens]
    loss = sum(ce * w for (ce, *_), w in zip(tokens, weights)) / max(n, 1)
    return loss + 0 * logits.sum(), token_metrics(tokens) | {"mean_token_weight": mean(weights)}


def target_log_probs(logits: Tensor, labels: Tensor) -> list[list[tuple[Tensor, int, int]]]:
    """Per row, in order, (log p(target) with its gradient, b, t) of each target: logits[b, t] predicts
    labels[b, t + 1]."""
    rows = []
    for b in range(labels.shape[0]):
        rows.append([(torch.log_softmax(logits[b, t], dim=-1)[int(labels[b, t + 1])], b, t)
                     for t in range(labels.shape[1] - 1) if int(labels[b, t + 1]) != -100])
    return rows


def psft_clipped(logits: Tensor, labels: Tensor, old_logits: Tensor, eps_low: float, eps_high: float,
                 num_items: int | None = None) -> Tensor:
    """The paper's PPO objective with advantage 1: -sum_i min(r_i, clip(r_i, 1 - eps_low, 1 + eps_high)) / N,
    r_i = p_i / sg(p_old_i). Its value is not the contract's; its gradient is PSFT's."""
    tokens = [tok for row in target_log_probs(logits, labels) for tok in row]
    total = 0 * logits.sum()
    for logp, b, t in tokens:
        y = int(labels[b, t + 1])
        r = torch.exp(logp - torch.log_softmax(old_logits[b, t], dim=-1)[y].detach())
        total = total - torch.minimum(r, r.clamp(1 - eps_low, 1 + eps_high))
    return total / (len(tokens) if num_items is None else num_items)


def psft(logits: Tensor, labels: Tensor, old_logits: Tensor, eps_low: float = 0.2, eps_high: float = 0.28,
         num_items: int | None = None):
    """sum_i CE_i * sg(r_i) * 1[r_i <= 1 + eps_high] / N, r_i = p_i / p_old_i, and the PSFT metrics."""
    tokens = [tok for row in targets_by_row(logits, labels) for tok in row]
    ratios = [math.exp(float(logp.detach()) - float(torch.log_softmax(old_logits[b, t], -1)[int(labels[b, t + 1])]))
              for logp, b, t in [tok for row in target_log_probs(logits, labels) for tok in row]]
    weights = [r if r <= 1 + eps_high else 0.0 for r in ratios]
    n = len(tokens) if num_items is None else num_items
    loss = sum(ce * w for (ce, *_), w in zip(tokens, weights)) / max(n, 1)
    metrics = token_metrics(tokens) | {
        "mean_token_weight": mean(weights), "psft_ratio": mean(ratios),
        "psft_clipped_high": mean([float(r > 1 + eps_high) for r in ratios]),
        "psft_clipped_low": mean([float(r < 1 - eps_low) for r in ratios]),
    }
    return loss + 0 * logits.sum(), metrics


def iw_sft(logits: Tensor, labels: Tensor, ref_logits: Tensor, temperature: float = 1.0, max_weight: float = 16.0,
           num_items: int | None = None):
    """Per row b: w_b = min(exp(temperature * mean_i(log p_i - log p_ref_i)), max_weight); sum_i w_b CE_i / N."""
    rows = target_log_probs(logits, labels)
    total, weights, token_weights = 0 * logits.sum(), [], []
    for row in rows:
        if not row:
            continue
        log_ratios = [float(logp.detach()) - float(torch.log_softmax(ref_logits[b, t], -1)[int(labels[b, t + 1])])
                      for logp, b, t in row]
        w = min(math.exp(temperature * sum(log_ratios) / len(log_ratios)), max_weight)
        weights.append(w)
        token_weights += [w] * len(row)
        total = total - w * sum(logp for logp, *_ in row)
    n = len(token_weights) if num_items is None else num_items
    tokens = [tok for row in targets_by_row(logits, labels) for tok in row]
    metrics = token_metrics(tokens) | {"mean_token_weight": mean(token_weights), "iw_sft_weight": mean(weights)}
    return total / max(n, 1), metrics


def deft(logits: Tensor, labels: Tensor, num_items: int | None = None):
    """sum_i CE_i * sg(p_i ** a_i) / N, a_i = sum_v softmax(logits_i)_v ** 2 (detached)."""
    tokens, weights, orders = [], [], []
    total = 0 * logits.sum()
    for logp, b, t in [tok for row in target_log_probs(logits, labels) for tok in row]:
        q = [math.exp(v) for v in torch.log_softmax(logits[b, t].detach(), -1).tolist()]
        a = sum(v * v for v in q)
        orders.append(a)
        weights.append(math.exp(a * float(logp.detach())))
        total = total - weights[-1] * logp
    tokens = [tok for row in targets_by_row(logits, labels) for tok in row]
    n = len(tokens) if num_items is None else num_items
    return total / max(n, 1), token_metrics(tokens) | {"mean_token_weight": mean(weights), "deft_order": mean(orders)}


def deft_qlog(logits: Tensor, labels: Tensor, num_items: int | None = None) -> Tensor:
    """The paper's loss, sum_i -(p_i ** a_i - 1) / a_i / N with a_i detached: its gradient is DEFT's."""
    total, count = 0 * logits.sum(), 0
    for logp, b, t in [tok for row in target_log_probs(logits, labels) for tok in row]:
        a = float(torch.softmax(logits[b, t].detach(), -1).square().sum())
        total, count = total - (torch.exp(a * logp) - 1) / a, count + 1
    return total / (count if num_items is None else num_items)
