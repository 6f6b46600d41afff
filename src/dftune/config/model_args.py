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
