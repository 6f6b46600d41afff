"""Every stage's own keys: one `StageArguments` dataclass per stage, with its ranges and checks.

They live apart from the stage modules so that `dftune train --help` and `parse_config` import only what the keys
need (`dftune.config`, `dftune.losses`, `dftune.numbers`), never a stage's data, models, trainer or TRL
(tests/config/test_fast_start.py). A stage module imports its keys from here; `STAGES` names both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from dftune.config.decoding_args import DecodingArguments
from dftune.config.parse import RunConfig, StageArguments
from dftune.data.lengths import PreferenceLimits
from dftune.losses import OBJECTIVES, Objective, precomputable_objectives
from dftune.numbers import Range


def compares_with_start(objective: Objective) -> bool:
    """The objective needs a frozen reference model (the starting one, or `ref_model_name_or_path`)."""
    return objective.needs_reference and objective.reference == "start"


def check_reference_keys(config: RunConfig) -> None:
    """`ref_model_name_or_path` belongs to stage dpo and to objectives with a KL anchor, `precompute_ref_log_probs` to
    stage dpo and to the objectives whose reference can be precomputed (a ValueError, which parse reports)."""
    if config.model.ref_model_name_or_path is not None and not compares_with_start(OBJECTIVES[config.method.loss]):
        anchored = [name for name, objective in OBJECTIVES.items() if compares_with_start(objective)]
        raise ValueError(f"ref_model_name_or_path applies to stage: dpo and to loss: {', '.join(anchored)} (a "
                         f"reference model), not to stage {config.method.stage} with loss: {config.method.loss}")
    if config.method.precompute_ref_log_probs and not OBJECTIVES[config.method.loss].precomputable:
        raise ValueError(f"precompute_ref_log_probs applies to stage: dpo and to loss: "
                         f"{', '.join(precomputable_objectives())} (a fixed reference that enters only as log p_ref of "
                         f"each target), not to stage {config.method.stage} with loss: {config.method.loss}"
                         f": {OBJECTIVES[config.method.loss].not_precomputable()}")


def check_sequence_parallel(config: RunConfig) -> None:
    """`sequence_parallel_size` > 1: stage sft or dllm (not block diffusion), unpacked rows, the reference (if any)
    run on the shards."""
    size, stage, loss = config.method.sequence_parallel_size, config.method.stage, config.method.loss
    if size == 1:
        return
    if stage not in ("sft", "dllm"):
        raise ValueError(f"sequence_parallel_size: {size} shards stage sft and dllm, not stage {stage}; "
                         "set sequence_parallel_size: 1")
    if config.method.precompute_ref_log_probs:
        raise ValueError(f"sequence_parallel_size: {size} cannot use precompute_ref_log_probs with loss: {loss} (a "
                         "column of whole rows); set precompute_ref_log_probs: false: the reference runs on the shards")
    if config.data.packing:
        raise ValueError(f"sequence_parallel_size: {size} cannot train packed rows (causal attention over a row "
                         "would cross its samples); set packing: false")


@dataclass
class SftArguments(StageArguments):
    """Stage sft has no keys of its own: its objective keys (`loss`, `dft_alpha`, ...) are MethodArguments'."""

    def check(self, config: RunConfig) -> None:
        check_reference_keys(config)
        check_sequence_parallel(config)


def unsharded_block_diffusion(size: int) -> str:
    """Why `sequence_parallel_size` > 1 refuses `diffusion_block_size` (at parse time, and in `DiffusionTrainer`)."""
    return (f"sequence_parallel_size: {size} cannot shard block diffusion (diffusion_block_size: its [noisy, clean] "
            "rows under a block-causal mask); set sequence_parallel_size: 1")


@dataclass
class DllmArguments(StageArguments, DecodingArguments):
    """Stage dllm's keys, and the decoding keys its evaluation samples use (`DecodingArguments`, as `dftune
    generate` and `dftune eval` take them)."""

    ranges: ClassVar[dict[str, Range]] = {
        **DecodingArguments.ranges,
        "diffusion_eps": Range(0, 1, low_open=True, high_open=True), "mask_token_id": Range(0),
        "diffusion_block_size": Range(1),
    }

    diffusion_eps: float = field(
        default=1e-3,
        metadata={"help": "stage dllm: mask ratios are t = (1 - eps) * u + eps with u ~ U(0, 1), so t >= eps."},
    )
    mask_token_id: int | None = field(
        default=None,
        metadata={"help": "stage dllm: the mask token id (default: the model config's mask_token_id, "
                  "else the tokenizer's mask token; LLaDA's is 126336)."},
    )
    noise_schedule: Literal["linear", "cosine"] = field(
        default="linear",
        metadata={"help": "stage dllm: how a sample's mask ratio follows its diffusion time s = (1 - eps) u + eps: "
                  "linear, ratio s and ELBO weight 1 / s (LLaDA); cosine, ratio 1 - cos(pi s / 2) and weight "
                  "(pi / 2) sin(pi s / 2) / ratio (MaskGIT/MDLM)."},
    )
    diffusion_shift_logits: bool | None = field(
        default=None,
        metadata={"help": "stage dllm: position i - 1 predicts token i, as in a model turned from an autoregressive "
                  "one (Dream; `dftune init-model --diffusion`). Default: the model config's "
                  "diffusion_shift_logits, else false (LLaDA: position i predicts token i)."},
    )

    diffusion_block_size: int | None = field(
        default=None,
        metadata={"help": "stage dllm: block diffusion (BD3-LM): rows cut into blocks of this many tokens, each "
                  "noised at its own ratio and denoised seeing the clean blocks before it (block-causal attention "
                  "over [noisy, clean], two complementary masked copies per sample). Default: none, masked "
                  "diffusion over the whole row."},
    )

    def check(self, config: RunConfig) -> None:
        check_sequence_parallel(config)
        if self.diffusion_block_size is not None and config.method.sequence_parallel_size > 1:
            raise ValueError(unsharded_block_diffusion(config.method.sequence_parallel_size))
        if self.diffusion_block_size is not None and self.noise_schedule != "linear":
            raise ValueError("diffusion_block_size trains two complementary copies at ratios t and 1 - t, equally "
                             "likely only under noise_schedule: linear; remove noise_schedule: "
                             f"{self.noise_schedule}")
        if self.block_length not in (None, self.diffusion_block_size) and self.diffusion_block_size is not None:
            raise ValueError(f"block_length {self.block_length}: the evaluation samples of a block-diffusion model "
                             f"decode its own blocks (diffusion_block_size {self.diffusion_block_size}); remove "
                             "block_length")
        if self.diffusion_block_size is not None and self.diffusion_eps >= 0.5:
            raise ValueError("diffusion_block_size draws block ratios on [diffusion_eps, 1 - diffusion_eps]: "
                             f"diffusion_eps must be below 0.5, got {self.diffusion_eps}")
        loss = config.method.loss
        supported = [name for name, objective in OBJECTIVES.items() if "dllm" in objective.stages]
        if loss not in supported:
            raise ValueError(f"stage: dllm supports loss: {', '.join(supported)} (sft: the masked-diffusion loss), "
                             f"not {loss}")
        if config.data.packing:
            raise ValueError("stage: dllm pads every row with EOS (answer tokens); set packing: false")
        check_reference_keys(config)


@dataclass
class DpoArguments(StageArguments):
    ranges: ClassVar[dict[str, Range]] = {
        "beta": Range(0, low_open=True), "max_prompt_length": Range(1), "max_completion_length": Range(1),
    }

    beta: float = field(
        default=0.1, metadata={"help": "stage dpo: how far the policy may move from the reference (TRL's beta)."}
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": "stage dpo: TRL's DPO loss_type, passed through (sigmoid = DPO, ipo, hinge, robust, ...)."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "stage dpo: prompts longer than this are cut to max_prompt_length tokens (by "
                  "truncation_mode), keeping the generation header."},
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "stage dpo: replies longer than this keep their first max_completion_length "
                                "tokens."},  # fmt: skip
    )
    truncation_mode: Literal["keep_end", "keep_start"] = field(
        default="keep_end",
        metadata={"help": "stage dpo: which part of a prompt cut to fit stays: keep_end its end (older TRL's and "
                  "LLaMA-Factory's way), keep_start its start; the generation header stays either way."},
    )
    adapter_name_or_path: str | None = field(
        default=None,
        metadata={"help": "stage dpo: a trained LoRA adapter (e.g. from SFT), loaded as the trainable policy and as "
                  "the frozen reference (seed 004's set-up); needs finetuning_type: lora."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = [name for item in self.loss_type for name in item.split(",") if name]

    def own_objective(self) -> str:
        return f"stage dpo, loss_type {','.join(self.loss_type)} beta={self.beta}"

    def check(self, config: RunConfig) -> None:
        check_sequence_parallel(config)
        if config.method.loss != "sft":  # resolved_loss() has run: sft is the default, so anything else was asked for
            raise ValueError(f"stage: dpo trains with loss_type (sigmoid, ipo, ...), not loss: {config.method.loss}")
        if not self.loss_type:
            raise ValueError("loss_type must name at least one TRL DPO loss, e.g. sigmoid")
        if self.adapter_name_or_path is not None and config.method.finetuning_type != "lora":
            raise ValueError("adapter_name_or_path trains that LoRA adapter: set finetuning_type: lora")
        if config.data.packing:
            raise ValueError("stage: dpo pads each pair (TRL 1.16 has no packing for DPO); set packing: false")


def dpo_keys(config: RunConfig) -> DpoArguments:
    """This run's stage dpo keys."""
    assert isinstance(config.stage_args, DpoArguments)  # parse_config built it from this stage's registry entry
    return config.stage_args


def preference_limits(config: RunConfig) -> PreferenceLimits:
    """How this run fits pairs to the length: the data keys and the stage's."""
    keys = dpo_keys(config)
    return PreferenceLimits(config.data.max_length, keys.max_prompt_length, keys.max_completion_length,
                            keys.truncation_mode, config.data.reply_share)  # fmt: skip
