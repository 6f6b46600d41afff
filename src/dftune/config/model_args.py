"""Model keys of a run: what to load and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A local model folder (e.g. from `dftune init-model`) or a Hub name."}
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Dtype of the loaded weights; 'auto' takes the checkpoint's own."}
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = field(
        default=None, metadata={"help": "Attention kernel; default: what transformers picks (sdpa where it can)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})
    enable_gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A separate frozen reference model: stage dpo's (default: see docs/dpo.md) and the KL anchor "
                  "of loss: asft (default: the starting model, or the base with LoRA disabled)."},
    )
    quantization_bit: int | None = field(
        default=None,
        metadata={"help": "QLoRA: load the base weights in 4 bits (NF4, double quantisation, bf16 compute) or 8 "
                  "through bitsandbytes (CUDA only); train LoRA on top (LLaMA-Factory's key)."},
    )

    def __post_init__(self) -> None:
        if self.quantization_bit not in (None, 4, 8):
            raise ValueError(f"quantization_bit must be 4 or 8, got {self.quantization_bit}")
