"""A causal LM turned into a masked-diffusion LM (Dream-style AR-to-diffusion, Ye et al. 2025): the same weights,
bidirectional attention, a mask token, and logits read one position to the right.

Dream keeps the autoregressive model's habit of predicting the *next* token: position i - 1 predicts token i, so
its diffusion loss and sampler shift the logits by one (`diffusion_shift_logits`). Attention becomes bidirectional
through the config's `is_causal: false`, which transformers' mask construction honours for decoder-only models
(the tiny-dllm preset relies on the same). The new mask token's embedding (and output row) start at the mean of
the others (transformers' `mean_resizing`: drawn around their mean and covariance), an average token, not noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.errors import DftuneError
from dftune.models.presets import MASK_TOKEN

BIDIRECTIONAL_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "smollm3")
"""Decoder families whose attention mask follows `config.is_causal` in transformers 5 (tests: llama)."""


def to_diffusion(model_dir: str | Path) -> Path:
    """Rewrite the causal LM saved in `model_dir` as a bidirectional masked-diffusion LM, in place: a `<|mask|>`
    token when the tokenizer has none, and `is_causal: false`, `mask_token_id`, `diffusion_shift_logits: true`
    in its config. A folder already converted is left as it is."""
    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", use_safetensors=True)
    config = model.config
    if getattr(config, "diffusion_shift_logits", False):
        return model_dir
    if config.model_type not in BIDIRECTIONAL_FAMILIES:
        raise DftuneError(f"--diffusion turns {', '.join(BIDIRECTIONAL_FAMILIES)} models into diffusion LMs; "
                          f"{model_dir} is a {config.model_type}")  # fmt: skip
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config.is_causal = False
    config.mask_token_id = tokenizer.mask_token_id
    config.diffusion_shift_logits = True
    with torch.no_grad():
        model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir
