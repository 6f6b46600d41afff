"""The model an evaluation scores: a local folder (causal or masked-diffusion) and, optionally, a LoRA adapter on
it, loaded under dftune's rules (whole safetensors, no checkpoint still being written, a tokenizer the model's
embeddings cover). `dftune eval` and the lm-eval backend both load through `load_evaluated`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from dftune.errors import DftuneError


@dataclass(frozen=True)
class Evaluated:
    """A loaded model in eval mode and what scoring it needs. `mask_token_id` and `shift_logits` are set for a
    masked-diffusion model only (`diffusion`)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    diffusion: bool
    mask_token_id: int | None
    shift_logits: bool
    max_length: int


def adapter_base(adapter: str, what: str) -> str:
    """The base model a LoRA adapter folder was trained on (`base_model_name_or_path` in its adapter_config.json)."""
    config = Path(adapter).expanduser() / "adapter_config.json"
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # a damaged adapter_config.json
        raise DftuneError(f"{what} {adapter}: cannot read adapter_config.json ({err}); save the adapter again"
                          ) from None
    base = saved.get("base_model_name_or_path") if isinstance(saved, dict) else None
    if not base:
        raise DftuneError(f"{what} {adapter} is a LoRA adapter whose adapter_config.json names no base model: give "
                          "the base model and the adapter apart (lm_eval: pretrained=BASE,peft=ADAPTER)")
    return str(base)


def split_adapter(model: str, adapter: str | None, what: str) -> tuple[str, str | None]:
    """(base, adapter): `model` may itself be an adapter folder, whose base its adapter_config.json names."""
    if adapter is None and (Path(model).expanduser() / "adapter_config.json").is_file():
        return adapter_base(model, what), model
    return model, adapter


def load_evaluated(model: str, adapter: str | None = None, *, flags: tuple[str, str] = ("--model", "--adapter"),
                   device: str | None = None, check_kind: Callable[[bool], None] | None = None) -> Evaluated:
    """`model` (with `adapter` applied), its tokenizer (the adapter's when given), on `device` (default: where
    transformers puts it). `flags` name the two arguments in errors. `check_kind` is called with whether the model
    is a diffusion one before its weights load (a flag that kind refuses fails fast)."""
    from transformers import AutoConfig

    from dftune.config.model_args import ModelArguments
    from dftune.models.integrity import check_local_model
    from dftune.models.loading import (
        check_vocabulary,
        is_diffusion_config,
        load_adapter,
        load_diffusion_model,
        load_model,
        resolve_mask_token_id,
        tokenizer_at,
    )
    from dftune.runtime.checkpoints import check_not_being_written
    from dftune.runtime.preflight import check_template

    for name, flag in zip((model, adapter), flags):
        check_not_being_written(name, flag)
        if name:
            check_local_model(name, flag)
    config = AutoConfig.from_pretrained(model)
    diffusion = is_diffusion_config(config)
    if check_kind is not None:
        check_kind(diffusion)
    model_args = ModelArguments(model_name_or_path=model, torch_dtype="auto")
    loaded = load_diffusion_model(model_args) if diffusion else load_model(model_args, what=flags[0])
    source, flag = (adapter, flags[1]) if adapter else (model, flags[0])
    tokenizer = tokenizer_at(source, flag)
    if tokenizer.chat_template:  # the one that will render the prompts
        check_template(tokenizer, f"the tokenizer of {flag} {source}")
    check_vocabulary(loaded, tokenizer, f"{flags[0]} {model}")
    if adapter:
        loaded = load_adapter(loaded, adapter)
    if device is not None:
        loaded = loaded.to(device)
    loaded.eval()
    return Evaluated(
        model=loaded,
        tokenizer=tokenizer,
        diffusion=diffusion,
        mask_token_id=resolve_mask_token_id(None, config, tokenizer) if diffusion else None,
        shift_logits=diffusion and bool(getattr(config, "diffusion_shift_logits", False)),
        max_length=int(getattr(config, "max_position_embeddings", None) or 2048),
    )
