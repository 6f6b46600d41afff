"""Load the model and tokenizer a run asks for, and wrap it with LoRA when asked: thin adapters over transformers/peft."""

from __future__ import annotations

import importlib.util
import logging

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dftune.config.method_args import MethodArguments
from dftune.config.model_args import ModelArguments
from dftune.errors import DftuneError

logger = logging.getLogger(__name__)


def check_attention(attn_implementation: str | None) -> None:
    """Fail before loading when the asked-for kernel cannot run here."""
    if attn_implementation != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise DftuneError(
            "attn_implementation: flash_attention_2 needs the flash-attn package, which is not installed. "
            "Fix: `pip install flash-attn --no-build-isolation` on a CUDA machine, or use attn_implementation: sdpa"
        )
    if not torch.cuda.is_available():
        raise DftuneError("attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa or eager on CPU")


def load_tokenizer(args: ModelArguments) -> PreTrainedTokenizerBase:
    if not args.model_name_or_path:
        raise DftuneError("model_name_or_path is required (a local folder, e.g. from `dftune init-model`)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    except OSError as err:
        raise DftuneError(f"cannot load a tokenizer from model_name_or_path {args.model_name_or_path!r}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(args: ModelArguments) -> PreTrainedModel:
    check_attention(args.attn_implementation)
    dtype = args.torch_dtype if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(
            args.model_name_or_path,
            dtype=dtype,
            attn_implementation=args.attn_implementation,
            trust_remote_code=args.trust_remote_code,
        )
    except OSError as err:
        raise DftuneError(f"cannot load model_name_or_path {args.model_name_or_path!r}: {err}") from None


def apply_lora(model: PreTrainedModel, method: MethodArguments) -> PreTrainedModel:
    """LoRA on `lora_target` modules; 'all' means every linear layer but the output head (peft's all-linear)."""
    targets: str | list[str] = "all-linear" if method.lora_target == ["all"] else method.lora_target
    config = LoraConfig(
        r=method.lora_rank,
        lora_alpha=method.lora_alpha if method.lora_alpha is not None else 2 * method.lora_rank,
        lora_dropout=method.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise DftuneError(f"lora_target {method.lora_target}: {err}") from None
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d on %s: %d of %d parameters trainable", method.lora_rank, targets, trainable, total)
    return model
