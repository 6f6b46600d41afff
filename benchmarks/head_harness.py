"""The measurement shared by the loss-head benchmarks: one head, one token count, a fresh process each.

CPU memory: ru_maxrss (the process's peak resident set) after the run minus ru_maxrss at a baseline taken once
the inputs exist and a [V, H] buffer the size of the weight gradient has been touched and freed, after a small
warm-up run (so library workspaces are in the baseline too). The difference is the peak the loss head needs
beyond its inputs and the weight gradient. CUDA: torch.cuda.max_memory_allocated the same way. Time: one run
after the measured run, loss + backward.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

Head = Callable[..., torch.Tensor]
"""head(hidden [N, H] requiring grad, weight [V, H], target [N], **inputs) -> scalar loss."""


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(
    head: Head, tokens: int, vocab: int, hidden_size: int, device: str, with_reference: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Peak bytes beyond inputs + weight gradient, and seconds per loss + backward (call in a fresh process).

    With `with_reference`, the head also gets a reference model's hidden states [N, H] and output layer [V, H]
    (`ref_hidden`, `ref_weight`: inputs, in the baseline). `dtype`: of the hidden states and the weight (a
    module's Parameter, so that a library's head can use it as its own)."""
    torch.manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, device=device, dtype=dtype)
    weight = torch.nn.Parameter((torch.randn(vocab, hidden_size, device=device) / hidden_size**0.5).to(dtype))
    target = torch.randint(0, vocab, (tokens,), device=device)
    inputs = {}
    if with_reference:
        inputs["ref_hidden"] = hidden + 0.1 * torch.randn_like(hidden)
        inputs["ref_weight"] = weight.detach() + 0.01 * torch.randn_like(weight)

    def run(n: int) -> float:
        h = hidden[:n].detach().requires_grad_()
        weight.grad = None
        extra = {key: value[:n] if key == "ref_hidden" else value for key, value in inputs.items()}
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        head(h, weight, target[:n], **extra).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(16)  # warm-up: BLAS and allocator workspaces belong to the baseline
    weight.grad = None
    grad_sized = torch.ones_like(weight)  # touch a [V, H] buffer: the weight gradient is not the head's overhead
    del grad_sized
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() + weight.numel() * weight.element_size()
    else:
        base = peak_bytes(device)
    run(tokens)
    peak = peak_bytes(device) - base
    return {"tokens": tokens, "peak_bytes": peak, "seconds": run(tokens)}


def in_fresh_process(script: str, variant: str, tokens: int, args: list[str]) -> dict:
    """Run `script --one VARIANT TOKENS ARGS` and read the JSON line it prints last."""
    cmd = [sys.executable, script, "--one", variant, str(tokens), *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def as_labels(hidden: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted targets [N] as a [1, N + 1] batch for `fused_linear_loss`: labels[:, t + 1] = target[t]."""
    labels = torch.cat([target.new_full((1,), -100), target])[None]  # [1, N + 1]
    return torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])])[None], labels  # [1, N + 1, H]


def report(table: str, results: list[dict], skipped: list[str], args, **extra) -> None:
    """Print the table and what was skipped; write the JSON (`--json`) with the run's settings."""
    print(table)
    for line in skipped:
        print("skipped:", line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "skipped": skipped, "table": table, "vocab": args.vocab,
                       "hidden": args.hidden, "device": args.device, **extra}, f, indent=1)
