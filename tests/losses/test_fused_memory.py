"""The fused head's reason to exist, measured: it computes one chunk of logits at a time, of the size it was given
(or `default_chunk_size`), and its peak memory is about one chunk, not the [N, V] logits. The peak is the CPU
allocator's own count under torch's profiler (every tensor allocation, freed or not); the chunk sizes are the
shapes of the matmuls the head really runs. No mock: a fallback to one chunk of all rows fails both."""

from __future__ import annotations

import torch
from torch._C._profiler import _EventType
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, TrainingArguments

from dftune.losses import compute_objective, default_chunk_size, fused_linear_loss
from dftune.models.presets import init_model
from dftune.runtime.objective_trainer import ObjectiveTrainer

N, V, H = 4096, 16384, 8  # full float32 logits: 256 MiB; the CPU default chunk: 2**23 // V = 512 rows, 32 MiB


def peak_bytes(fn) -> int:
    """The most bytes the CPU allocator held at once while `fn` ran (allocations made inside it only)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak, nodes = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.tag == _EventType.Allocation:
            peak = max(peak, node.extra_fields.total_allocated)
    return peak


class LogitRows(TorchFunctionMode):
    """Records the rows of every matmul whose output has `vocab` columns: the chunks of logits computed."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.mm, torch.matmul, torch.Tensor.matmul, torch.nn.functional.linear) and \
                isinstance(out, torch.Tensor) and out.shape[-1] == self.vocab:  # fmt: skip
            self.rows.append(out.flatten(0, -2).shape[0])
        return out


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, N + 1, H, generator=generator, requires_grad=True)
    weight = (torch.randn(V, H, generator=generator) / H**0.5).requires_grad_()
    labels = torch.randint(0, V, (1, N + 1), generator=generator)
    return hidden, weight, labels


def test_default_chunk_bounds_the_peak_memory_of_forward_and_backward():
    hidden, weight, labels = inputs()
    chunk = default_chunk_size(V, torch.device("cpu"))
    assert chunk == 2**23 // V == 512
    chunk_bytes, logits_bytes = chunk * V * 4, N * V * 4
    fused = peak_bytes(lambda: fused_linear_loss(hidden, weight, labels, objective="dft").loss.backward())
    # Two [chunk, V] float32 blocks (the reused buffer and one temporary of the chunk's gradient), plus a few
    # [V, H] and [N, H] tensors (the gradients and their accumulators). Measured: 2 chunks + 0.7 MiB at N = 2048.
    assert chunk_bytes <= fused <= 2 * chunk_bytes + 8 * (V + N) * H * 4, fused / 2**20
    unfused = peak_bytes(lambda: compute_objective("dft", hidden @ weight.T, labels).loss.backward())
    assert unfused >= logits_bytes > 3 * fused  # (8 chunks)  # the measurement sees the [N, V] logits when they exist


def test_the_chunk_size_given_is_the_chunk_computed():
    hidden, weight, labels = inputs()
    with LogitRows(V) as seen:
        fused_linear_loss(hidden, weight, labels, objective="dft", chunk_size=300).loss.backward()
    assert max(seen.rows) == 300 and sum(seen.rows) == N  # every target row once, 300 at a time (one pass)


def test_fused_chunk_size_reaches_the_head_in_training(tmp_path):
    """The trainer's `fused_chunk_size` (config key) is what the head computes by: chunks of 7 target rows."""
    model = AutoModelForCausalLM.from_pretrained(init_model("tiny-llama", tmp_path / "m"), dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = ObjectiveTrainer(model=model, args=args, objective="sft", objective_kwargs={}, fused_loss="true",
                               fused_chunk_size=7)  # fmt: skip
    ids = torch.randint(5, 100, (2, 24))
    vocab = model.config.vocab_size
    with LogitRows(vocab) as seen:
        loss = trainer.compute_loss(model.train(), {"input_ids": ids, "labels": ids.clone()},
                                    num_items_in_batch=torch.tensor(46))  # fmt: skip
        loss.backward()
    assert seen.rows and max(seen.rows) == 7  # never [B * T, V]: the model's own head computed no logits
