"""`lm_eval --model dftune --model_args pretrained=DIR[,peft=ADAPTER]`: dftune's models in lm-evaluation-harness.

`DftuneLM` is what the name `dftune` resolves to (the `lm_eval.models` entry point in pyproject.toml, and the
`register_model` below for lm-eval releases that read no entry points). It loads the folder through
`dftune.harness.loaded` and hands back the backend its kind needs: lm-eval's own `HFLM` around the loaded causal
model (or LoRA adapter: `pretrained` may be the adapter folder itself), or `DiffusionLM` for a masked-diffusion
model, which scores by the ELBO and generates by dftune's sampler.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import simple_parse_args_string

from dftune.errors import DftuneError
from dftune.harness.diffusion_lm import DIFFUSION_ARGS, DiffusionLM
from dftune.harness.loaded import load_evaluated, split_adapter

logger = logging.getLogger(__name__)

CAUSAL_ARGS = ("max_length",)
"""model_args a causal model takes beyond pretrained, peft and device (batch sizes come from lm_eval's flags)."""


def load_lm(pretrained: str | None = None, peft: str | None = None, device: str | None = None,
            batch_size: int | str = 1, max_batch_size: int | None = None, **options: Any) -> LM:
    """The lm-eval backend for the model folder `pretrained` (with the adapter `peft`), on `device` (default: the
    GPU where there is one). `options`: the kind's own model_args (`CAUSAL_ARGS`, `DIFFUSION_ARGS`)."""
    if not pretrained:
        raise DftuneError("lm_eval --model dftune needs --model_args pretrained=DIR (a dftune output_dir or model)")
    base, adapter = split_adapter(str(pretrained), None if peft is None else str(peft), "pretrained")
    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:  # lm-eval's CLI asks for cuda:0 unless told otherwise; HFLM falls back the same way
            logger.warning("--device %s: no CUDA GPU here, the model runs on the CPU", device)
        device = "cuda" if torch.cuda.is_available() else "cpu"
    evaluated = load_evaluated(base, adapter, flags=("pretrained", "peft"), device=device)
    kind, known = ("diffusion", DIFFUSION_ARGS) if evaluated.diffusion else ("causal", CAUSAL_ARGS)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DftuneError(f"--model_args {', '.join(unknown)}: not a key of the dftune backend for a {kind} model; "
                          f"it takes pretrained, peft, device, {', '.join(known)}")
    if evaluated.diffusion:
        return DiffusionLM(evaluated, **options)
    return HFLM(pretrained=evaluated.model, tokenizer=evaluated.tokenizer, batch_size=batch_size,
                max_batch_size=max_batch_size or 64, max_length=options.get("max_length", evaluated.max_length))


@register_model("dftune")
class DftuneLM(LM):
    """The name `dftune` in lm-eval: its constructors return `load_lm(...)`, an `HFLM` or a `DiffusionLM`.

    lm-eval builds a model with `create_from_arg_string` (CLI) or `create_from_arg_obj` (simple_evaluate); both
    are overridden, so this (abstract) class itself is never instantiated.
    """

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> LM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return load_lm(**{**arg_dict, **extra})
