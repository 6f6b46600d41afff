"""The fused loss head: when the output layer can compute the objective from the final hidden states itself, and
the switch that makes it do so inside the model's forward (so DDP, ZeRO-3 and peft see the head's weight used).

`fused_linear_loss(hidden, head.weight, ...)` equals the model's logits followed by the objective only when the
head is a plain bias-free `nn.Linear` and nothing transforms the logits after it; `fusable_head` says which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from dftune.losses import LossOutput

# Config keys of architectures that transform the logits after the output layer (Gemma 2/3 soft-capping,
# Cohere, Granite): the fused head computes plain `hidden @ W.T`, so those fall back.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def fusable_head(model: nn.Module) -> tuple[nn.Linear | None, str]:
    """The output layer when `fused_linear_loss(hidden, head.weight, ...)` provably equals the model's logits
    followed by the objective, else (None, the reason).

    Exact when the head is a plain bias-free `nn.Linear` reached as `get_output_embeddings()` and the config
    declares no transform after it. LoRA on the decoder's linear layers is fine (they run in the forward); a
    peft-wrapped head is not.
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
    for key in LOGIT_TRANSFORMS:
        value = getattr(base.config, key, None)  # optional, architecture-specific keys
        if value is not None and value != 1.0:
            return None, f"the model transforms its logits after the output layer (config.{key} = {value})"
    return head, ""


@contextmanager
def head_computes(head: nn.Linear, loss_fn: Callable[[torch.Tensor], LossOutput]) -> Iterator[list[LossOutput]]:
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

    head.forward = forward  # instance attribute shadows nn.Linear.forward; hooks still run
    try:
        yield results
    finally:
        del head.forward


@contextmanager
def head_returns_input(head: nn.Linear) -> Iterator[None]:
    """Inside, the output layer returns its input: the model's `logits` output is its final hidden states [B, T, H]
    (a reference model's, for the fused head's KL term), and no [B, T, V] logits are made."""
    head.forward = lambda hidden: hidden  # instance attribute shadows nn.Linear.forward; hooks still run
    try:
        yield
    finally:
        del head.forward
