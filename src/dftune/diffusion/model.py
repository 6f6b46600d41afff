"""Which models are masked-diffusion LMs, how to load one, and which id is its mask token."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

from dftune.config.model_args import ModelArguments
from dftune.errors import DftuneError
from dftune.train.model import check_attention


def is_diffusion_config(config: PreTrainedConfig) -> bool:
    """A masked LM, a decoder declared bidirectional (`is_causal: false`, e.g. the tiny-dllm preset), or a
    config naming a mask token (LLaDA's `mask_token_id: 126336`)."""
    return (
        type(config) in MODEL_FOR_MASKED_LM_MAPPING
        or config.to_dict().get("is_causal") is False
        or config.to_dict().get("mask_token_id") is not None
    )


def load_diffusion_model(args: ModelArguments) -> PreTrainedModel:
    """AutoModelForMaskedLM where transformers knows the architecture; else the causal-LM class of a
    bidirectional decoder, or (remote code, e.g. LLaDA) whatever `AutoModel` maps it to."""
    check_attention(args.attn_implementation)
    dtype = args.torch_dtype if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
    kwargs = {"dtype": dtype, "attn_implementation": args.attn_implementation,
              "trust_remote_code": args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise DftuneError(f"cannot load model_name_or_path {args.model_name_or_path!r}: {err}") from None
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return AutoModelForMaskedLM.from_pretrained(args.model_name_or_path, **kwargs)
    if not is_diffusion_config(config):
        raise DftuneError(
            f"stage: dllm needs a bidirectional model, and {args.model_name_or_path!r} ({config.model_type}) "
            "is a causal LM: use a masked LM, a LLaDA-style checkpoint (trust_remote_code: true), "
            "`dftune init-model --preset tiny-dllm`, or set is_causal: false in its config"
        )
    auto_map = config.to_dict().get("auto_map") or {}
    auto = AutoModel if "AutoModelForCausalLM" not in auto_map and "AutoModel" in auto_map else AutoModelForCausalLM
    return auto.from_pretrained(args.model_name_or_path, **kwargs)


def resolve_mask_token_id(
    explicit: int | None, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> int:
    """The `mask_token_id` key, else the model config's `mask_token_id`, else the tokenizer's mask token."""
    for value in (explicit, config.to_dict().get("mask_token_id"), tokenizer.mask_token_id):
        if value is not None:
            return int(value)
    raise DftuneError(
        "stage: dllm needs a mask token: the model config and the tokenizer name none; set mask_token_id "
        "(LLaDA's is 126336)"
    )
