"""Sequence parallelism (DeepSpeed-Ulysses, arXiv:2309.14509): each process of a group holds 1/P of every sequence.

Why our own: accelerate 1.15's `ParallelismConfig(sp_size=...)` accepts only `sp_backend="deepspeed"`, and
transformers 5.23 hands it to DeepSpeed's `UlyssesSPAttentionHF`, which needs the DeepSpeed engine (a GPU); on CPU
nothing shards. Here the P processes of a group gather their micro-batches (so every sequence is trained once, as
under DDP), shift the labels over the WHOLE sequence (the first target of shard k + 1 is predicted by the last
position of shard k), pad the length to a multiple of P and keep shard k of every column. Around attention, an
all-to-all over the group trades the sequence shards of all heads for the whole sequence of 1/P of the heads
(`heads_to_sequence`), attention runs causally on whole sequences, and the reverse all-to-all gives back the shards
(`sequence_to_heads`). Every other layer works per position, so on shards. Gloo implements `all_to_all_single`
(torch 2.13), so this runs on CPU too. Attention is causal for stage sft; for stage dllm's bidirectional decoders it
is full, over the whole sequence, with the group's key mask hiding the positions that round the length up to a
multiple of P (stage dllm's own padding is EOS answer tokens, attended as without sharding).

The loss of each shard is sum_i c_i * CE_i over the GLOBAL target count (`ObjectiveTrainer.get_batch_samples`),
exact for every objective: one whose c_i needs whole samples (bft, iw_sft) weighs the group's gathered statistics
(`SequenceGroup.whole`), and counts each sample once (on the group's first rank).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from dftune.errors import DftuneError
from dftune.losses import IGNORE_INDEX, shift_labels
from dftune.losses.contract import Statistics
from dftune.losses.core import shifted

ATTENTION = "dftune_ulysses"
"""The attention implementation a sequence-parallel model runs (`AttentionInterface`)."""

PADDING = {"labels": IGNORE_INDEX, "source_ids": -1, "attention_mask": 0}
"""What each column of a padded position (or padded row) holds: no target, no source, hidden from attention; other
columns 0 (any token id: causal attention never sees a padded position after every real one, full attention gets
`attention_mask`)."""


class _Exchange(torch.autograd.Function):
    """`all_to_all_single` on dim 0 ([P, ...]: block j goes to rank j; block i of the result came from rank i).
    It is its own inverse, so its backward is the same exchange of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return exchange(x, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return exchange(grad, ctx.group), None


def exchange(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """`_Exchange` without autograd. Both buffers contiguous: `empty_like` of a transposed view keeps its strides,
    and all_to_all_single fills memory in storage order."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def heads_to_sequence(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """[B, H, T/P, D] (all heads of this rank's shard) -> [B, H/P, T, D] (this rank's heads over the whole sequence)."""
    size = dist.get_world_size(group)
    b, h, t, d = x.shape
    blocks = x.view(b, size, h // size, t, d).transpose(0, 1)  # [P (to rank j: head block j), B, H/P, t, D]
    got = _Exchange.apply(blocks, group)  # [P (from rank i: sequence shard i), B, H/P, t, D]
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * t, d)


def sequence_to_heads(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """[B, T, H/P, D] (attention's output, this rank's heads) -> [B, T/P, H, D] (all heads of this rank's shard)."""
    size = dist.get_world_size(group)
    b, t, h, d = x.shape
    blocks = x.view(b, size, t // size, h, d).transpose(0, 1)  # [P (to rank j: sequence shard j), B, t, H/P, D]
    got = _Exchange.apply(blocks, group)  # [P (from rank i: head block i), B, t, H/P, D]
    return got.permute(1, 2, 0, 3, 4).reshape(b, t // size, size * h, d)


def ulysses_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      *, group: dist.ProcessGroup, causal: bool, **kwargs: Any) -> tuple[Tensor, None]:  # fmt: skip
    """SDPA over whole sequences, from and to sequence shards: equals `sdpa_attention_forward` of the unsharded
    q, k, v [B, H, T, D], causal or full, cut to this rank's shard. `attention_mask`: None, or the whole sequences'
    [B, 1, T, T] mask (`whole_key_mask`, made once per forward). Causal attention needs none: its rows are
    right-padded (`SequenceGroup.shard` checks), so no real position sees a pad."""
    q, k, v = (heads_to_sequence(x, group) for x in (query, key, value))
    causal = causal and attention_mask is None
    out, _ = sdpa_attention_forward(module, q, k, v, attention_mask, **{**kwargs, "is_causal": causal})
    return sequence_to_heads(out, group), None  # out: [B, T, H/P, D]


def whole_key_mask(*, group: dist.ProcessGroup, causal: bool, attention_mask: Tensor | None = None,
                   **kwargs: Any) -> Tensor | None:  # fmt: skip
    """The mask function of `ATTENTION` (once per forward, for every layer): None without a mask, else [B, 1, T, T]
    bool, query i may attend to key j, from each rank's [B, T/P] key mask `attention_mask` (rank order)."""
    if attention_mask is None:
        return None
    parts = [torch.empty_like(attention_mask, dtype=torch.uint8) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, attention_mask.to(torch.uint8).contiguous(), group=group)
    keys = torch.cat(parts, dim=1).bool()  # [B, T]
    allowed = keys[:, None, None, :].expand(-1, 1, keys.shape[1], -1)
    return allowed & torch.ones_like(allowed[0, 0]).tril() if causal else allowed


@dataclass(frozen=True)
class SequenceGroup:
    """The `size` processes that share every sequence (consecutive global ranks), and this one's shard `rank`."""

    size: int
    rank: int
    group: dist.ProcessGroup
    attended: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)
    """How many attention calls ran through the group (`shard_attention` counts them, `check_attended` reads them)."""

    def check_attended(self, model: nn.Module) -> None:
        """An error once a forward has run without attention through the group: a model whose attention ignores
        transformers' AttentionInterface (remote code with its own) would attend within each shard alone."""
        if not self.attended[0]:
            raise DftuneError(f"sequence_parallel_size: {self.size} cannot shard {type(model).__name__}: its attention "
                              "does not run through transformers' AttentionInterface (remote code with its own "
                              "attention?), so it would attend within each shard alone; set sequence_parallel_size: 1")

    def shard(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Stage sft's micro-batch as this rank trains it: the group's micro-batches stacked (this rank's rows at
        block `rank`), labels shifted over whole rows, and this rank's shard of the positions (`sliced`): `labels`
        are then the targets (`shift=False`), `source_ids` shifted alike; no `attention_mask` (causal attention)."""
        if "attention_mask" in batch:
            mask = batch["attention_mask"]
            if bool((mask[:, 1:] > mask[:, :-1]).any()):
                raise DftuneError("sequence_parallel_size > 1 needs right-padded rows: a row of this batch has padding "
                                  "before a token (left padding); set the tokenizer's padding_side to right")
        if "ref_logps" in batch:
            raise DftuneError("sequence_parallel_size > 1 cannot use precomputed reference log-probs; set "
                              "precompute_ref_log_probs: false (the reference then runs on the same shards)")
        if "attention_mask" not in batch and "position_ids" in batch:
            raise DftuneError("sequence_parallel_size > 1 cannot train packed rows (packing: true): causal attention "
                              "over a whole row would cross the packed samples; set packing: false")
        rows = self.gathered({name: value for name, value in batch.items() if name != "position_ids"})
        rows["labels"] = shift_labels(rows["labels"])
        if "source_ids" in rows:
            rows["source_ids"] = shifted(rows["source_ids"], -1)  # as metrics.source_sums shifts them
        rows.pop("attention_mask", None)
        return self.sliced(rows)

    def sliced(self, rows: dict[str, Tensor]) -> dict[str, Tensor]:
        """This rank's shard of the group's whole rows: every [B, T] column padded (`PADDING`) to a multiple of
        `size` positions and cut to block `rank`, with `position_ids` (the global positions); [B] columns whole."""
        batch, length = rows["labels"].shape
        longest = -(-length // self.size) * self.size
        columns = {name: F.pad(value, (0, longest - length), value=PADDING.get(name, 0)) if value.dim() == 2 else value
                   for name, value in rows.items()}  # fmt: skip
        columns["position_ids"] = torch.arange(longest, device=rows["labels"].device).expand(batch, -1)
        cut = slice(self.rank * longest // self.size, (self.rank + 1) * longest // self.size)
        return {name: value[:, cut] if value.dim() == 2 else value for name, value in columns.items()}

    def broadcast(self, columns: dict[str, Tensor]) -> dict[str, Tensor]:
        """The group's first rank's `columns` on every rank (each rank passes tensors of the same shapes): one random
        draw (stage dllm's noise) for the whole group."""
        for name in sorted(columns):
            dist.broadcast(columns[name], group=self.group, group_src=0)
        return columns

    def whole(self, stats: Statistics) -> tuple[Statistics, Tensor]:
        """The statistics of the group's targets of the same rows (rank order is sequence order within a row), and
        this rank's positions among them: what an objective weighing whole samples needs (`objective_loss(whole=)`).
        Every rank weighs the same whole samples and keeps its own targets' coefficients."""
        size = torch.tensor([stats.ce.numel()], device=stats.ce.device)
        sizes = [torch.empty_like(size) for _ in range(self.size)]
        dist.all_gather(sizes, size, group=self.group)
        counts = [int(n) for n in sizes]
        ce = self.concatenated(stats.ce, counts)
        segment = None if stats.segment is None else self.concatenated(stats.segment, counts)
        rows = {name: self.concatenated(values, counts) for name, values in sorted(stats.rows.items())}
        start = sum(counts[:self.rank])
        mine = torch.arange(start, start + counts[self.rank], device=ce.device)
        return Statistics(ce=ce, num_samples=stats.num_samples, segment=segment, rows=rows), mine

    def concatenated(self, values: Tensor, counts: list[int]) -> Tensor:
        """[sum(counts)] the group's [counts[r]] tensors, in rank order."""
        padded = F.pad(values, (0, max(counts) - values.numel()))
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    def gathered(self, rows: dict[str, Tensor], lengthen: dict[str, Any] | None = None) -> dict[str, Tensor]:
        """Every [B, T] column stacked over the group (rank order), each micro-batch padded to the group's most rows
        (`PADDING`: no target) and longest length (with `lengthen[name]` where given, as a collator pads its rows;
        else `PADDING`)."""
        first = next(iter(rows.values()))
        shape = torch.tensor(first.shape, device=first.device)
        dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=self.group)
        most, longest = int(shape[0]), int(shape[1])
        out = {}
        for name in sorted(rows):
            value, fill = rows[name], PADDING.get(name, 0)
            value = F.pad(value, (0, longest - value.shape[1]), value=(lengthen or {}).get(name, fill))
            value = F.pad(value, (0, 0, 0, most - value.shape[0]), value=fill)
            parts = [torch.empty_like(value) for _ in range(self.size)]
            dist.all_gather(parts, value.contiguous(), group=self.group)
            out[name] = torch.cat(parts)
        return out


def sequence_group(size: int) -> SequenceGroup | None:
    """The group of this process for `sequence_parallel_size` = `size` (None for 1). Every process must call it."""
    if size == 1:
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() % size:
        world = dist.get_world_size() if dist.is_initialized() else 1
        raise DftuneError(f"sequence_parallel_size: {size} must divide the number of processes ({world}): launch "
                          f"with torchrun --nproc_per_node {size} (or a multiple) -m dftune train ...")
    world, rank = dist.get_world_size(), dist.get_rank()
    groups = [dist.new_group(list(range(start, start + size))) for start in range(0, world, size)]
    return SequenceGroup(size, rank % size, groups[rank // size])


def shard_attention(model: nn.Module, group: SequenceGroup, *, causal: bool = True) -> str:
    """Make `model` (a transformers model) attend through `ulysses_attention` over `group`, causally (stage sft) or
    over the whole sequence (stage dllm); return the attention implementation it had (`unsharded_attention`)."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    if heads % group.size or kv_heads % group.size:
        raise DftuneError(f"sequence_parallel_size: {group.size} must divide the model's attention heads ({heads}) "
                          f"and key/value heads ({kv_heads})")
    before = str(config._attn_implementation)

    def attention(*args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        group.attended[0] += 1
        return ulysses_attention(*args, group=group.group, causal=causal, **kwargs)

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, partial(whole_key_mask, group=group.group, causal=causal))
    model.set_attn_implementation(ATTENTION)
    return before


@contextmanager
def unsharded_attention(model: nn.Module, implementation: str) -> Iterator[None]:
    """`model`, sharded by `shard_attention`, attending with `implementation` over whole sequences on this process
    alone (a sample decoded by the main process), then sharded again."""
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(ATTENTION)
