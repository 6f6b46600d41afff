"""Method keys of a run: the training stage, the objective and the fine-tuning type."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal


def _env_default(name: str, default: str, cast: type) -> object:
    """The seeds read BFT settings from the environment: keep that working, as defaults only."""
    return field(default_factory=lambda: cast(os.environ.get(name, default)))


@dataclass
class MethodArguments:
    stage: Literal["sft", "dllm", "dpo"] = field(default="sft", metadata={"help": "Training stage."})
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
    diffusion_eps: float = field(
        default=1e-3,
        metadata={"help": "stage dllm: mask ratios are t = (1 - eps) * u + eps with u ~ U(0, 1), so t >= eps."},
    )
    mask_token_id: int | None = field(
        default=None,
        metadata={"help": "stage dllm: the mask token id (default: the model config's mask_token_id, "
                  "else the tokenizer's mask token; LLaDA's is 126336)."},
    )
    beta: float = field(
        default=0.1, metadata={"help": "stage dpo: how far the policy may move from the reference (TRL's beta)."}
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": "stage dpo: TRL's DPO loss_type, passed through (sigmoid = DPO, ipo, hinge, robust, ...)."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "stage dpo: prompts longer than this keep their last max_prompt_length tokens."},
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "stage dpo: compute the reference log-probs once before training, then free the reference."},
    )
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "stage dpo: a separate reference model (default: see docs/dpo.md)."}
    )
    adapter_name_or_path: str | None = field(
        default=None,
        metadata={"help": "stage dpo: a trained LoRA adapter (e.g. from SFT), loaded as the trainable policy and as "
                  "the frozen reference (seed 004's set-up); needs finetuning_type: lora."},
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
        if self.stage == "dllm" and self.loss == "bft":
            raise ValueError("stage: dllm supports loss: sft (the masked-diffusion loss) or dft, not bft")
        if not 0.0 < self.diffusion_eps < 1.0:
            raise ValueError(f"diffusion_eps must be in (0, 1), got {self.diffusion_eps}")
        self._check_preference_keys()

    def _check_preference_keys(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = [name for item in self.loss_type for name in item.split(",") if name]
        if self.stage != "dpo":
            given = [key for key in ("max_prompt_length", "ref_model_name_or_path", "adapter_name_or_path")
                     if getattr(self, key) is not None]
            given += ["precompute_ref_log_probs"] if self.precompute_ref_log_probs else []
            if given:
                raise ValueError(f"{', '.join(given)} apply to stage: dpo only, but the stage is {self.stage}")
            return
        if self.loss != "sft":  # resolved_loss() has run: sft is the default, so anything else was asked for
            raise ValueError(f"stage: dpo trains with loss_type (sigmoid, ipo, ...), not loss: {self.loss}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not self.loss_type:
            raise ValueError("loss_type must name at least one TRL DPO loss, e.g. sigmoid")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be at least 1, got {self.max_prompt_length}")
        if self.adapter_name_or_path is not None and self.finetuning_type != "lora":
            raise ValueError("adapter_name_or_path trains that LoRA adapter: set finetuning_type: lora")

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
