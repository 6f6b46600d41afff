"""The log-likelihood of an answer under a masked-diffusion LM: LLaDA's Monte-Carlo lower bound (ELBO).

A masked-diffusion LM has no exact log p(answer | prompt); LLaDA (Nie et al. 2025, Sec. 2.4, Eq. 6 and its
1/t form, Eq. 3 restricted to the answer) estimates the bound

    log p(a | p) >= E_t E_{a_t} [ (1/t) * sum_{i: a_t[i] = M} log p(a[i] | p, a_t) ]

with t ~ U(0, 1] and each answer token masked with probability t. Both masking schemes here estimate the same
expectation: for a mask set m of size k over an answer of length L, the t scheme weighs it by
int_0^1 t^k (1-t)^(L-k) / t dt = 1 / (k * C(L, k)), and the `l` scheme (LLaDA's lower-variance Eq. 6: k uniform
in 1..L, then k positions without replacement, weight L / k) by (1/L) * (1/C(L, k)) * (L/k), the same number.
The t scheme's variance is unbounded (a sample with tiny t that masks a token weighs 1/t), the l scheme's is
not: `elbo` draws the l scheme unless told otherwise. tests/diffusion/test_likelihood.py checks both against
the enumerated expectation in float64.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from dftune.diffusion.sampler import model_logits

Scheme = Literal["l", "t"]


def masked_answer_terms(log_probs: Tensor, answer: Tensor, masked: Tensor, weight: Tensor) -> Tensor:
    """[N] one estimate per sample: weight[n] * sum_i masked[n, i] * log_probs[n, i, answer[i]].

    log_probs [N, L, V] are the model's log-probabilities at the answer positions of each noised row, answer [L]
    the true tokens, masked [N, L] which of them were masks, weight [N] the scheme's weight (1/t or L/k). Equals
    `sum(weight[n] * log_probs[n, i, answer[i]] for i in range(L) if masked[n, i])` for each n.
    """
    picked = log_probs.gather(-1, answer.expand(log_probs.shape[0], -1)[..., None]).squeeze(-1)  # [N, L]
    return weight * (picked * masked).sum(-1)


def sample_masks(
    length: int, samples: int, scheme: Scheme, generator: torch.Generator | None = None, device: str = "cpu"
) -> tuple[Tensor, Tensor]:
    """masked [N, L] and weight [N] (float64) for `samples` draws of the `scheme` (see the module docstring).

    t: t = 1 - U[0, 1) in (0, 1], each position masked with probability t, weight 1/t.
    l: k uniform in 1..L, k positions masked uniformly without replacement, weight L / k.
    """
    if scheme == "t":
        t = 1.0 - torch.rand(samples, generator=generator, dtype=torch.float64, device=device)
        masked = torch.rand(samples, length, generator=generator, dtype=torch.float64, device=device) < t[:, None]
        return masked, 1.0 / t
    if scheme == "l":
        k = torch.randint(1, length + 1, (samples,), generator=generator, device=device)
        order = torch.rand(samples, length, generator=generator, device=device).argsort(-1)
        masked = order < k[:, None]  # the k positions whose random rank is below k: uniform without replacement
        return masked, length / k.double()
    raise ValueError(f"scheme must be 'l' or 't', got {scheme!r}")


@torch.no_grad()
def elbo(
    model: nn.Module,
    prompt: Tensor,
    answer: Tensor,
    *,
    mask_token_id: int,
    samples: int = 128,
    scheme: Scheme = "l",
    batch_size: int = 32,
    shift_logits: bool = False,
    generator: torch.Generator | None = None,
) -> float:
    """The Monte-Carlo ELBO of `answer` [L] after `prompt` [P] (1-D ids): the mean of `samples` draws of
    `masked_answer_terms` over `model`'s log-softmax (float64) at the answer positions, the prompt never masked.
    `shift_logits`: the model predicts position i from i - 1 (`sampler.model_logits`)."""
    if answer.numel() == 0:
        return 0.0
    masked, weight = sample_masks(answer.numel(), samples, scheme, generator, str(answer.device))
    total = 0.0
    for start in range(0, samples, batch_size):
        rows_masked, rows_weight = masked[start : start + batch_size], weight[start : start + batch_size]
        noised = torch.where(rows_masked, mask_token_id, answer)  # [n, L]
        x = torch.cat([prompt.expand(noised.shape[0], -1), noised], dim=1)  # [n, P + L]
        logits = model_logits(model, x, shift_logits)[:, prompt.numel() :]  # [n, L, V]
        log_probs = torch.log_softmax(logits.double(), -1)
        total += float(masked_answer_terms(log_probs, answer, rows_masked, rows_weight).sum())
    return total / samples
