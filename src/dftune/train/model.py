"""Load the model and tokenizer a run asks for, and wrap it with LoRA when asked: thin adapters over transformers/peft."""

from __future__ import annotations

import importlib.util
import logging

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

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


def quantization_config(args: ModelArguments) -> BitsAndBytesConfig | None:
    """QLoRA's set-up (NF4, double quantisation, bf16 compute and storage, as seed 004), or a DftuneError here,
    before any weights load, when bitsandbytes or CUDA is missing."""
    if args.quantization_bit is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DftuneError(
            f"quantization_bit: {args.quantization_bit} needs the bitsandbytes package, which is not installed. "
            "Fix: `pip install bitsandbytes` on a CUDA machine, or remove quantization_bit"
        )
    if not torch.cuda.is_available():
        raise DftuneError(f"quantization_bit: {args.quantization_bit} needs a CUDA GPU; remove it to train here")
    if args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,  # FSDP shards the packed 4-bit weights as this dtype
    )


def load_model(args: ModelArguments) -> PreTrainedModel:
    check_attention(args.attn_implementation)
    quantization = quantization_config(args)
    dtype = args.torch_dtype if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(
            args.model_name_or_path,
            dtype=dtype,
            attn_implementation=args.attn_implementation,
            trust_remote_code=args.trust_remote_code,
            quantization_config=quantization,
            use_safetensors=True,  # never unpickle weights (docs/reliability.md)
        )
    except OSError as err:
        raise DftuneError(f"cannot load model_name_or_path {args.model_name_or_path!r}: {err}") from None


def lora_config(method: MethodArguments) -> LoraConfig:
    """LoRA on `lora_target` modules; 'all' means every linear layer but the output head (peft's all-linear)."""
    targets: str | list[str] = "all-linear" if method.lora_target == ["all"] else method.lora_target
    return LoraConfig(
        r=method.lora_rank,
        lora_alpha=method.lora_alpha if method.lora_alpha is not None else 2 * method.lora_rank,
        lora_dropout=method.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def apply_lora(model: PreTrainedModel, method: MethodArguments) -> PreTrainedModel:
    config = lora_config(method)
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise DftuneError(f"lora_target {method.lora_target}: {err}") from None
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d on %s: %d of %d parameters trainable", method.lora_rank, config.target_modules, trainable,
                total)
    return model
