"""The machine a run finds: without CUDA (or another accelerator) `use_cpu` is set when the config does not say.

Transformers 5.23 refuses `--bf16 True` on such a machine ("Your setup doesn't support bf16/gpu. You need to assign
use_cpu") and, under torchrun without use_cpu, sets up no process group, so each process trains alone (world size 1)
on all the data. With use_cpu, bf16 and fp16 become CPU autocast and torchrun processes join one gloo group (DDP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

CPU_NOTE = "training on CPU: no CUDA or other accelerator on this machine (use_cpu: true; bf16/fp16 as CPU autocast)"


def accelerator_available() -> bool:
    """CUDA (or ROCm), XPU, MPS or an Ascend NPU: a device transformers trains on without use_cpu."""
    if torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    if torch.backends.mps.is_available():
        return True
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def needs_cpu(values: Mapping[str, Any]) -> bool:
    """True when the run should set use_cpu itself: not given (nor no_cuda) and no accelerator here."""
    return "use_cpu" not in values and not accelerator_available()
