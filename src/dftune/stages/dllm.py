"""Stage dllm: masked-diffusion SFT of a bidirectional LM (LLaDA, Nie et al. 2025, Sec. 2.3 and Appendix B.1).

Forward noising, in `DiffusionCollator`, from tokenised conversations (input_ids, and labels with -100 on every
non-answer token) to a noised batch:

- answer = the labelled tokens. Each row ends at its last answer token (the template's trailing newline
  after the end-of-turn token is dropped), then is padded with EOS to the longest row; those EOS are answer
  tokens too, so the model learns to fill the rest of a fixed-length reply with EOS (LLaDA's SFT recipe).
  A masked LM's own tokenizer without an EOS (BERT's WordPiece) ends replies with its `[SEP]`, which becomes its
  EOS (`models.loading.use_end_of_reply_token`); one without a chat template gets `data.encode.PLAIN_TEMPLATE`;
- per sample, t = (1 - eps) * u + eps with u ~ U(0, 1); each answer token is replaced by the mask token with
  probability t; prompt tokens (and earlier user turns of a multi-turn record) are never masked;
- no attention_mask: every position attends to the whole row, padding included.
- with `diffusion_block_size`, block diffusion instead (BD3-LM): a ratio per block, two complementary copies per
  sample, the model fed [x_t, x_0] under a block-causal mask (`dllm_blocks`).

Batch out: input_ids [B, L] (noised), labels [B, L] (the original token where masked, else -100),
t [B] (float32), answer_mask [B, L] (bool; its sum is the loss's normaliser).

What `DiffusionTrainer` changes from stage sft's `ObjectiveTrainer`, and why:
- the count that normalises the loss is the global number of *answer* tokens (masked or not, EOS padding
  included) over the accumulation steps and processes, as LLaDA's SFT loss divides by the answer length:
  then batch 1 x accumulation 8 and batch 8 x accumulation 1 give the same gradient;
- the model sees the noised input_ids only (no attention_mask: attention covers the whole row) and its
  logits are not shifted (unless the model was turned from an autoregressive one: `diffusion_shift_logits`);
- the fused loss head (`fused_loss`, as in stage sft) runs over the masked positions only, unshifted, each sample's
  coefficients times 1 / t (`losses.fused_diffusion_objective`); a head it cannot fuse (BERT's output layer has a
  bias) falls back with one log line;
- after each evaluation, a few held-out prompts are decoded with the decoding keys (`max_new_tokens`, `steps`,
  `remasking`, ...: `config.decoding_args`, as `dftune generate` and `dftune eval`) and logged with their
  references (`dllm_samples`).
The metric window, evaluation and everything else are ObjectiveTrainer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import MODEL_FOR_MASKED_LM_MAPPING, TrainerCallback

from dftune.config.parse import RunConfig
from dftune.data.encode import IGNORE_INDEX
from dftune.diffusion.approximate_cache import check_full_attention_cache
from dftune.diffusion.block import check_block_model
from dftune.errors import DftuneError
from dftune.losses import diffusion_objective, fused_diffusion_objective, shift_labels
from dftune.models.loading import resolve_mask_token_id
from dftune.runtime.objective_trainer import ObjectiveTrainer
from dftune.runtime.sequence_parallel import SequenceGroup
from dftune.stages.common import (
    chat_data,
    chat_tokenizer,
    objective_trainer_kwargs,
    trainable_model,
)
from dftune.stages.dllm_blocks import block_model_inputs, complementary_block_noise
from dftune.stages.dllm_samples import EvalSamples
from dftune.stages.keys import DllmArguments, unsharded_block_diffusion


def mask_ratio_and_weight(s: torch.Tensor, schedule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask ratio t [B] float32, ELBO weight [B] float64) at diffusion times `s` [B].

    With alpha(s) the probability that a token is kept, the masked-diffusion ELBO weighs a masked token's CE by
    -alpha'(s) / (1 - alpha(s)). linear: alpha = 1 - s, so t = s and the weight is 1 / t (LLaDA's loss). cosine:
    alpha = cos(pi s / 2), so t = 1 - cos(pi s / 2) and the weight is (pi / 2) sin(pi s / 2) / t.
    """
    if schedule == "linear":
        return s, 1.0 / s.double()
    if schedule == "cosine":
        angle = torch.pi * s.double() / 2
        t = 1.0 - torch.cos(angle)
        return t.float(), (torch.pi / 2) * torch.sin(angle) / t
    raise ValueError(f"noise_schedule must be linear or cosine, got {schedule!r}")


@dataclass
class DiffusionCollator:
    """`collator(features) -> dict[str, Tensor]` for features holding `input_ids` and `labels` lists."""

    mask_token_id: int
    eos_token_id: int
    eps: float = 1e-3
    noise_schedule: str = "linear"
    generator: torch.Generator | None = None
    """Random source for t and the masks (tests pass a seeded one; training uses torch's global RNG,
    which the Trainer seeds)."""
    block_size: int | None = None
    """`diffusion_block_size`: two complementary copies per sample, a ratio per block (`dllm_blocks`)."""
    noised: bool = True
    """False: clean rows (input_ids, answer_mask, and labels = the answer tokens, so the Trainer sees labels), which
    sequence parallelism gathers over its group before `DiffusionTrainer.shard_batch` noises them once (`noise`)."""

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self._trim(feature) for feature in features]
        longest = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), longest), self.eos_token_id, dtype=torch.long)
        answer_mask = torch.ones((len(rows), longest), dtype=torch.bool)  # EOS padding is answer
        for row, (ids, answer) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            answer_mask[row, : len(ids)] = answer
        if not self.noised:
            return {"input_ids": input_ids, "answer_mask": answer_mask,
                    "labels": input_ids.masked_fill(~answer_mask, IGNORE_INDEX)}
        return self.noise(input_ids, answer_mask)

    def noise(self, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The noised batch of clean rows `input_ids` [B, L] whose `answer_mask` [B, L] tokens may be masked."""
        if self.block_size is not None:
            return complementary_block_noise(input_ids, answer_mask, block_size=self.block_size, eps=self.eps,
                                             mask_token_id=self.mask_token_id, generator=self.generator)
        t, weight = mask_ratio_and_weight(self.sample_t(input_ids.shape[0]), self.noise_schedule)
        u = torch.rand(input_ids.shape, generator=self.generator)  # [B, L]
        masked = (u < t[:, None]) & answer_mask
        return {
            "input_ids": input_ids.masked_fill(masked, self.mask_token_id),
            "labels": input_ids.masked_fill(~masked, IGNORE_INDEX),
            "t": t,
            "loss_weight": weight,
            "answer_mask": answer_mask,
        }

    def sample_t(self, batch_size: int) -> torch.Tensor:
        """[B] diffusion times in [eps, 1): s = (1 - eps) * u + eps, u ~ U(0, 1) (the mask ratio when linear)."""
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


class DiffusionTrainer(ObjectiveTrainer):
    """Trainer for masked-diffusion SFT; `objective` is `sft` (the plain loss) or `dft` (experimental), with its
    `objective_kwargs` (dft: `alpha`). With `sequence_parallel_size`, its collator hands over clean rows
    (`DiffusionCollator(noised=False)`): `shard_batch` gathers the group's, noises them once and shards them."""

    attends_causally = False  # bidirectional: a sequence shard attends to every position of its rows

    def __init__(self, *args: Any, objective: str, objective_kwargs: dict[str, Any] | None = None,
                 fused_loss: str = "false", shift_logits: bool = False, block_size: int | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        self.shift_logits = shift_logits
        self.block_size = block_size  # both read by _sequence_group, which the parent's __init__ calls
        super().__init__(*args, objective=objective, objective_kwargs=dict(objective_kwargs or {}),
                         fused_loss=fused_loss, **kwargs)  # fmt: skip
        if block_size is not None:
            check_block_model(self.model.config)
        # The collator needs labels, which remote-code models (LLaDA) do not take in forward: keep the columns.
        self._signature_columns = ["input_ids", "labels"]

    def batch_count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer tokens of a micro-batch (or sequence shard), masked or not: LLaDA's SFT loss divides by the answer
        length."""
        return batch["answer_mask"].sum()

    def _sequence_group(self, size: int) -> SequenceGroup | None:
        if size > 1 and self.block_size is not None:
            raise DftuneError(unsharded_block_diffusion(size))
        if size > 1 and type(self.model.config) in MODEL_FOR_MASKED_LM_MAPPING:
            raise DftuneError(f"sequence_parallel_size: {size} shards decoder diffusion models (is_causal: false: "
                              f"LLaDA-style, tiny-dllm, `init-model --diffusion`), not the masked LM "
                              f"{self.model.config.model_type}, whose position embeddings are its own; set "
                              "sequence_parallel_size: 1")
        return super()._sequence_group(size)

    def shard_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The group's clean rows gathered (EOS answer tokens lengthen them, as the collator pads), noised once for
        the group (by its first rank), labels shifted over whole rows if the logits are, then this rank's shard;
        `attention_mask` hides the positions that round the length up (`SequenceGroup.sliced`)."""
        group, collator = self.sequence, self.data_collator
        assert group is not None and isinstance(collator, DiffusionCollator)
        clean = group.gathered({name: batch[name] for name in ("input_ids", "answer_mask")},
                               lengthen={"input_ids": collator.eos_token_id, "answer_mask": True})
        rows = group.broadcast(collator.noise(clean["input_ids"], clean["answer_mask"]))
        if self.shift_logits:
            rows["labels"] = shift_labels(rows["labels"])
        rows["attention_mask"] = torch.ones_like(rows["labels"])
        return group.sliced(rows)

    def compute_loss(  # type: ignore[override]
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        if self.sequence is not None and not model.training:  # training batches are sharded by get_batch_samples
            inputs = self.shard_batch(inputs)
        labels, t, answer_mask = inputs["labels"], inputs["t"], inputs["answer_mask"]
        row_weight = inputs.get("loss_weight")  # the schedule's ELBO weight (1 / t when linear)
        model_inputs, shift = {"input_ids": inputs["input_ids"]}, self.shift_logits
        if self.sequence is not None:  # a shard (`shard_batch`): its global positions, labels shifted already
            model_inputs |= {"position_ids": inputs["position_ids"], "attention_mask": inputs["attention_mask"]}
            shift = False
        if self.block_size is not None:  # [x_t, x_0], block-causal; outputs already aligned with the labels
            model_inputs, labels = block_model_inputs(inputs, block_size=self.block_size, shift=shift,
                                                      attention=self.model.config._attn_implementation,
                                                      dtype=self.model.dtype)  # fmt: skip
            shift = False
        # Training: the global count from get_batch_samples. Evaluation: this batch's count, and the window
        # weighs each batch's loss by it, which gives the exact mean over the eval set.
        local_count = answer_mask.sum()
        count = num_items_in_batch if model.training and num_items_in_batch is not None else local_count
        common = dict(num_answer_tokens=count, shift=shift, row_weight=row_weight,
                      **self.spec.kwargs_at(self.objective_kwargs, self.state.global_step))  # fmt: skip
        if self.fused_head is not None and not (return_outputs and self.compute_metrics is not None):
            out, outputs = self.fused_forward(model, model_inputs, lambda hidden, head: (
                fused_diffusion_objective(self.objective, hidden, head.head.weight, labels, t,
                                          chunk_size=self.fused_chunk_size, logit_transform=head.transform, **common)
            )), {}  # fmt: skip
        else:
            outputs = model(**model_inputs)
            out = diffusion_objective(self.objective, outputs.logits, labels, t, **common)
        global_count = num_items_in_batch if model.training else None
        loss = self.record(out, training=model.training, global_count=global_count, eval_weight=int(local_count))
        if not model.training and self.compute_metrics is None:
            outputs = {}  # nobody reads eval logits: do not let the evaluation loop gather [B, L, V]
        return (loss, outputs) if return_outputs else loss


def build_trainer(config: RunConfig, callbacks: list[TrainerCallback]) -> DiffusionTrainer:
    """Data first (bad records stop the run before any model loads), then the diffusion model, LoRA and Trainer."""
    stage_args = config.stage_args
    assert isinstance(stage_args, DllmArguments)  # parse_config built it from this stage's registry entry
    tokenizer = chat_tokenizer(config, masked_lm=True)  # EOS (else SEP) ends a reply; plain template if none
    prepared = chat_data(config, tokenizer)
    model = trainable_model(config, diffusion=True)
    mask_token_id = resolve_mask_token_id(stage_args.mask_token_id, model.config, tokenizer)
    if stage_args.diffusion_block_size is not None or "diffusion_block_size" in model.config.to_dict():
        model.config.diffusion_block_size = stage_args.diffusion_block_size  # saved: decoding uses these blocks
    shift_logits = stage_args.diffusion_shift_logits
    if shift_logits is None:
        shift_logits = bool(getattr(model.config, "diffusion_shift_logits", False))
    trainer = DiffusionTrainer(
        model=model,
        data_collator=DiffusionCollator(mask_token_id, tokenizer.eos_token_id, eps=stage_args.diffusion_eps,
                                        noise_schedule=stage_args.noise_schedule,
                                        block_size=stage_args.diffusion_block_size,
                                        noised=config.method.sequence_parallel_size == 1),
        shift_logits=shift_logits,
        block_size=stage_args.diffusion_block_size,
        **objective_trainer_kwargs(config, prepared, tokenizer, callbacks),
    )
    if stage_args.diffusion_block_size is None and stage_args.cache != "none":
        check_full_attention_cache(model, stage_args.cache)  # the eval samples' cache fails now, not after training
    if prepared.eval is not None:
        samples = EvalSamples(tokenizer, mask_token_id, shift_logits=shift_logits, options=stage_args.decoding())
        trainer.add_callback(samples.attach(trainer))
    return trainer
