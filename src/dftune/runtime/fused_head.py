"""The fused loss head: when the output layer can compute the objective from the final hidden states itself, and
the switch that makes it do so inside the model's forward (so DDP, ZeRO-3 and peft see the head's weight used).

`fused_linear_loss(hidden, head.weight, ..., logit_transform=...)` equals the model's logits followed by the
objective only when the head is a plain bias-free `nn.Linear` and what the architecture does to its output
(soft-capping, a scale) is known; `fusable_head` says which. Inside `FusedHead.computes` the head returns the loss
and the model's own transform of the head's output is switched off for that forward (the fused head applies it
chunk by chunk instead), so the model returns the loss as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from dftune.losses import LogitTransform, LossOutput


@dataclass(frozen=True)
class KnownTransform:
    """How one architecture transforms its head's output (read from its transformers modeling code): the transform,
    from its config, and the attribute its forward reads it from, with the value that makes that a no-op."""

    read: Callable[[Any], LogitTransform]
    owner: str  # "config" (model.config), "model" (the inner decoder, model.model) or "self" (the causal-LM module)
    attribute: str
    neutral: Any


LOGIT_TRANSFORMS: dict[str, KnownTransform] = {
    "gemma2": KnownTransform(lambda c: LogitTransform(softcap=c.final_logit_softcapping), "config",
                             "final_logit_softcapping", None),
    "gemma3_text": KnownTransform(lambda c: LogitTransform(softcap=c.final_logit_softcapping), "config",
                                  "final_logit_softcapping", None),
    "cohere": KnownTransform(lambda c: LogitTransform(scale=c.logit_scale), "self", "logit_scale", 1.0),
    "cohere2": KnownTransform(lambda c: LogitTransform(scale=c.logit_scale), "self", "logit_scale", 1.0),
    "granite": KnownTransform(lambda c: LogitTransform(scale=1.0 / c.logits_scaling), "config", "logits_scaling", 1.0),
    "granitemoe": KnownTransform(lambda c: LogitTransform(scale=1.0 / c.logits_scaling), "config",
                                 "logits_scaling", 1.0),
    "falcon_h1": KnownTransform(lambda c: LogitTransform(scale=c.lm_head_multiplier), "model",
                                "lm_head_multiplier", 1.0),
}
"""By config `model_type`. tests/runtime/test_logit_transforms.py checks each against the model's own forward, so an
upstream change to where a model keeps its transform fails there, loudly."""
TRANSFORM_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")
"""Config keys that transform the logits; a model that sets one and is not in LOGIT_TRANSFORMS is not fused."""


@dataclass
class FusedHead:
    """A model's output layer, its logit transform, and the switches that make its forward compute the loss."""

    head: nn.Linear
    transform: LogitTransform
    model: PreTrainedModel
    known: KnownTransform | None

    @contextmanager
    def computes(self, loss_fn: Callable[[torch.Tensor], LossOutput]) -> Iterator[list[LossOutput]]:
        """Inside, the output layer computes `loss_fn(final hidden states [B, T, H])` instead of the logits.

        The loss runs inside the head's own forward, called by the model's forward, so every wrapper sees the head's
        weight used where it expects it: DDP (which otherwise marks it unused and fails when its gradient arrives),
        DeepSpeed ZeRO-3 (whose forward hooks gather the partitioned weight), peft. The model's `logits` output is
        then the scalar loss; the LossOutput is left in the yielded list.
        """
        results: list[LossOutput] = []

        def forward(hidden: torch.Tensor) -> torch.Tensor:
            results.append(loss_fn(hidden))
            return results[-1].loss

        with self._head_forward(forward), self._untransformed():
            yield results

    @contextmanager
    def returns_input(self) -> Iterator[None]:
        """Inside, the model's `logits` output is its final hidden states [B, T, H] (a reference model's, for the
        fused head's KL term): no [B, T, V] logits are made."""
        with self._head_forward(lambda hidden: hidden), self._untransformed():
            yield

    @contextmanager
    def _head_forward(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        self.head.forward = forward  # instance attribute shadows nn.Linear.forward; hooks still run
        try:
            yield
        finally:
            del self.head.forward

    @contextmanager
    def _untransformed(self) -> Iterator[None]:
        """The model's own transform of the head's output off (the fused head applies it), restored after."""
        if self.known is None:
            yield
            return
        owner = {"config": self.model.config, "self": self.model}.get(self.known.owner) or self.model.model
        saved = getattr(owner, self.known.attribute)
        setattr(owner, self.known.attribute, self.known.neutral)
        try:
            yield
        finally:
            setattr(owner, self.known.attribute, saved)


def fusable_head(model: nn.Module) -> tuple[FusedHead | None, str]:
    """The model's head as a `FusedHead` when `fused_linear_loss(hidden, head.weight, ..., logit_transform=...)`
    provably equals its logits followed by the objective, else (None, the reason).

    Exact when the head is a plain bias-free `nn.Linear` reached as `get_output_embeddings()` and what the
    architecture does after it is known (`LOGIT_TRANSFORMS`). LoRA on the decoder's linear layers is fine (they run
    in the forward); a peft-wrapped head is not.
    """
    if isinstance(model, PeftModel):
        peft_type = str(model.peft_config[model.active_adapter].peft_type.value)
        if peft_type != "LORA":
            return None, f"peft {peft_type} changes the inputs or outputs of the decoder"
        base = model.get_base_model()
    else:
        base = model
    if not isinstance(base, PreTrainedModel):
        return None, f"{type(base).__name__} is not a transformers model"
    head = base.get_output_embeddings()
    if isinstance(head, BaseTunerLayer):
        return None, f"the output layer is LoRA-adapted (peft {type(head).__name__} around lm_head)"
    if type(head) is not nn.Linear:
        return None, f"the output layer is {type(head).__name__}, not a plain nn.Linear"
    if head.bias is not None:
        return None, "the output layer has a bias"
    config = base.config
    known = LOGIT_TRANSFORMS.get(config.model_type)
    if known is not None:
        return FusedHead(head, known.read(config), base, known), ""
    for key in TRANSFORM_KEYS:
        value = getattr(config, key, None)  # optional, architecture-specific keys
        if value is not None and value != 1.0:
            return None, (f"the model transforms its logits after the output layer (config.{key} = {value}) in a way "
                          f"dftune does not know for {config.model_type}")
    return FusedHead(head, LogitTransform(), base, None), ""
