"""The memory table of docs/scaling.md: model-state memory per GPU for full, LoRA and QLoRA fine-tuning of 7B, 8B
and 72B models on 8 GPUs, without sharding and under ZeRO-2, ZeRO-3 (= FSDP full shard) and ZeRO-3 with CPU
offload. Full fine-tuning uses DeepSpeed's own estimators; LoRA and QLoRA apply the same byte counts to a frozen
base. Activations are not included (see the page).

    python docs/memory_estimates.py            # prints the markdown table that docs/scaling.md shows
"""

from __future__ import annotations

from dataclasses import dataclass

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

GIB = 2**30
GPUS = 8
LORA_RANK = 16
QLORA_BYTES = 0.52  # NF4: 4 bits per weight plus double-quantised block constants (bitsandbytes, block 64)
BUFFER = 1.5  # DeepSpeed's additional_buffer_factor on CPU memory


@dataclass(frozen=True)
class Architecture:
    """A Llama/Qwen2-style decoder, from the numbers in its config.json."""

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    qkv_bias: bool

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of the seven projections of one layer: every `lora_target: all` module."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    @property
    def total_params(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden
        per_layer += (self.hidden + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.layers * per_layer + 2 * self.vocab * self.hidden + self.hidden  # untied embeddings, final norm

    @property
    def largest_layer_params(self) -> int:
        return self.vocab * self.hidden  # the embedding (and the untied lm_head)

    @property
    def lora_params(self) -> int:
        return self.layers * sum(LORA_RANK * (a + b) for a, b in self.linear_shapes())


MODELS = (
    Architecture("Qwen2.5-7B", 152_064, 3_584, 18_944, 28, 28, 4, qkv_bias=True),
    Architecture("Llama-3.1-8B", 128_256, 4_096, 14_336, 32, 32, 8, qkv_bias=False),
    Architecture("Qwen2.5-72B", 152_064, 8_192, 29_568, 80, 64, 8, qkv_bias=True),
)


def full(model: Architecture) -> list[tuple[float, float]]:
    """(GPU bytes per GPU, CPU bytes per node of offloaded states): bf16 weights and gradients, fp32 master weights and Adam moments (16 bytes a
    parameter), unsharded and under ZeRO-2, ZeRO-3, ZeRO-3 with parameters and optimizer offloaded."""
    total, largest = model.total_params, model.largest_layer_params
    zero2 = estimate_zero2_model_states_mem_needs(total, GPUS, cpu_offload=False)
    zero3 = estimate_zero3_model_states_mem_needs(total, largest, GPUS, cpu_offload=False)
    offload = estimate_zero3_model_states_mem_needs(total, largest, GPUS, cpu_offload=True, cpu_offload_params=True)
    return [(16 * total, 0), (zero2[1], 0), (zero3[1], 0), (offload[1], offload[0])]


def adapters(model: Architecture, base_bytes: float) -> list[tuple[float, float]]:
    """The same engines with a frozen base of `base_bytes` per weight and 16 bytes per LoRA parameter; the
    largest layer is gathered in bf16 under ZeRO-3."""
    base, lora, gathered = base_bytes * model.total_params, 16 * model.lora_params, 2 * model.largest_layer_params
    return [
        (base + lora, 0),
        (base + 2 * model.lora_params + 14 * model.lora_params / GPUS, 0),
        (gathered + (base + lora) / GPUS, 0),
        (gathered, (base + lora) * BUFFER),
    ]


def cell(gpu: float, cpu: float) -> str:
    text = f"{gpu / GIB:.1f}" + (f" (+{cpu / GIB:.0f} CPU)" if cpu else "")
    return text if gpu / GIB <= 80 else f"**{text}** ✗"


def table() -> str:
    header = ["model", "params", "method", "1 GPU / DDP", "ZeRO-2", "ZeRO-3 / FSDP", "ZeRO-3 + offload"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for model in MODELS:
        methods = {"full": full(model), "LoRA r16 (bf16 base)": adapters(model, 2), "QLoRA r16 (4-bit base)":
                   adapters(model, QLORA_BYTES)}  # fmt: skip
        for method, cells in methods.items():
            params = f"{model.total_params / 1e9:.2f}B" + (f" ({model.lora_params / 1e6:.0f}M LoRA)" if "LoRA" in
                                                          method else "")  # fmt: skip
            lines.append(f"| {model.name} | {params} | {method} | " + " | ".join(cell(*c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
