"""Method keys of a run: the training stage, the objective and the fine-tuning type.

The stage's own keys (diffusion_eps, beta, ...) are its dataclass in `dftune.stages.<stage>`; `stage` itself is
checked against that registry by `dftune.config.parse.parse_config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal


def _env_default(name: str, default: str, cast: type) -> object:
    """The seeds read BFT settings from the environment: keep that working, as defaults only."""
    return field(default_factory=lambda: cast(os.environ.get(name, default)))


@dataclass
class MethodArguments:
    stage: str = field(default="sft", metadata={"help": "Training stage: sft, dllm or dpo (dftune.stages.STAGES)."})
    loss: Literal["sft", "dft", "bft"] | None = field(
        default=None,
        metadata={"help": "Objective. Default: bft if use_bft_loss, dft if use_dft_loss or dft_alpha is set, else sft."},
    )
    dft_alpha: float | None = field(
        default=None, metadata={"help": "DFT token weight alpha*p + 1 - alpha (1: the paper's DFT, 0: SFT)."}
    )
    bft_group_size: int = _env_default("BFT_GROUP_SIZE", "256", int)  # type: ignore[assignment]
    bft_gamma: float = _env_default("BFT_CONF_GAMMA", "1.0", float)  # type: ignore[assignment]
    use_dft_loss: bool = field(default=False, metadata={"help": "LLaMA-Factory alias for loss: dft."})
    use_bft_loss: bool = field(default=False, metadata={"help": "LLaMA-Factory alias for loss: bft."})
    fused_loss: str = field(
        default="auto",
        metadata={"help": "auto|true|false: compute the loss from the hidden states one chunk of logits at a time "
                  "(never the [B, T, V] logits). auto: where exact, else the plain head with one log line saying why; "
                  "true: an error where it cannot apply."},
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
        if self.bft_group_size < 1:
            raise ValueError(f"bft_group_size must be at least 1, got {self.bft_group_size}")
        if self.dft_alpha is not None and not 0.0 <= self.dft_alpha <= 1.0:
            raise ValueError(f"dft_alpha must be in [0, 1], got {self.dft_alpha}")
        self.loss = self.resolved_loss()

    def resolved_loss(self) -> str:
        """One objective from `loss` and the seeds' booleans, rejecting combinations that contradict."""
        implied = "bft" if self.use_bft_loss else "dft" if (self.use_dft_loss or self.dft_alpha is not None) else None
        if self.loss is not None and implied is not None and implied != self.loss:
            raise ValueError(f"loss: {self.loss} contradicts the keys that select {implied} "
                             "(use_bft_loss / use_dft_loss / dft_alpha): keep one")
        loss = self.loss or implied or "sft"
        if self.dft_alpha is not None and loss != "dft":
            raise ValueError(f"dft_alpha applies to loss: dft only, but the loss is {loss}")
        return loss

    @property
    def effective_dft_alpha(self) -> float:
        return 1.0 if self.dft_alpha is None else self.dft_alpha
