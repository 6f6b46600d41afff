"""Method keys of a run: the training stage, the objective and the fine-tuning type.

The stage's own keys (diffusion_eps, beta, ...) are its dataclass in `dftune.stages.keys`; `stage` itself is
checked against that registry by `dftune.config.parse.parse_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dftune.config.objective_args import (
    LossName,
    ObjectiveArguments,
    objective_settings,
    resolve_loss,
)
from dftune.numbers import Range


@dataclass
class MethodArguments(ObjectiveArguments):  # type: ignore[misc, valid-type]
    """The method keys; the objectives' own keys (`dft_alpha`, `bft_group_size`, `use_dft_loss`, ...) are inherited
    from `ObjectiveArguments`, which the objective registry declares."""

    ranges: ClassVar[dict[str, Range]] = {
        **ObjectiveArguments.ranges, "fused_chunk_size": Range(1), "sequence_parallel_size": Range(1),
        "lora_rank": Range(1),
        "lora_alpha": Range(0, low_open=True), "lora_dropout": Range(0, 1, high_open=True),
    }
    """Its number keys' ranges, the objective settings' included (`dftune.config.number_keys` checks them)."""

    stage: str = field(default="sft", metadata={"help": "Training stage (the registry dftune.stages.STAGES)."})
    loss: LossName | None = field(  # type: ignore[valid-type]
        default=None,
        metadata={"help": "Objective (dftune.losses.OBJECTIVES). Default: the one its keys select (use_bft_loss, "
                  "use_dft_loss, dft_alpha, ...), else sft."},
    )
    fused_loss: str = field(
        default="auto",
        metadata={"help": "auto|true|false: compute the loss from the hidden states one chunk of logits at a time "
                  "(never the [B, T, V] logits). auto: where exact, else the plain head with one log line saying why; "
                  "true: an error where it cannot apply."},
    )
    fused_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Target tokens per chunk of the fused loss head. Default: by device and free memory (CPU: "
                  "32 MiB of logits; CUDA: at most 5% of the free memory and 1 GiB for one chunk's buffers)."},
    )
    sequence_parallel_size: int = field(
        default=1,
        metadata={"help": "Processes that share every sequence (Ulysses: each holds 1/N of its positions, attention "
                  "trades them for 1/N of the heads); it must divide the number of processes and the model's heads. "
                  "Stage sft, every objective (bft, iw_sft: unfused); stage dllm with a decoder diffusion model "
                  "(not block diffusion)."},
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "stage dpo, loss: iw_sft: run the reference once over the data before training (its "
                  "log-prob of each target), then free it and train without it."},
    )
    finetuning_type: Literal["full", "lora"] = field(default="full", metadata={"help": "Train all weights or LoRA."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default 2 * lora_rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "Module names to adapt, comma- or space-separated; 'all' = every linear layer but the head."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.lora_target, str):
            self.lora_target = [self.lora_target]
        # LLaMA-Factory writes `lora_target: q_proj,v_proj`.
        self.lora_target = [name for item in self.lora_target for name in item.split(",") if name]
        self.fused_loss = str(self.fused_loss).lower()  # YAML `true` arrives as a bool or "True"
        if self.fused_loss not in ("auto", "true", "false"):
            raise ValueError(f"fused_loss must be auto, true or false, got {self.fused_loss}")
        self.loss = resolve_loss(self)

    def objective_kwargs(self) -> dict[str, Any]:
        """The chosen objective's settings by keyword (`alpha`, `group_size`, ...), defaults filled in."""
        return objective_settings(self)
