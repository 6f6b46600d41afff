"""The policy DPO trains and the frozen reference it is measured against, one rule per set-up (ASFT's KL anchor
compares with the same reference: `frozen_reference`).

| set-up                                   | policy                          | reference                            |
|------------------------------------------|---------------------------------|--------------------------------------|
| `ref_model_name_or_path`                 | as below                        | that model, loaded like the policy   |
| `adapter_name_or_path` (seed 004)        | base + that adapter, trainable  | base + the same adapter, frozen      |
| `finetuning_type: lora`                  | base + a new LoRA adapter       | base with the adapters disabled      |
| `finetuning_type: full`                  | the starting model              | a frozen copy of the starting model  |

Seed 004 loads its SFT adapter twice (`PeftModel.from_pretrained(..., adapter_name="DPO")` then
`load_adapter(..., adapter_name="reference")`) and names both in DPOConfig. TRL 1.16 removed those two
arguments: given a PeftModel that already holds an adapter and no reference model, it adds a "ref" adapter
with the same config and copies the weights into it, frozen. Same result; `check_reference` verifies it.

The full-model copy is loaded again from disk rather than left to TRL, which re-creates it from the config's
model id and fails under ZeRO-3; loading through `load_model` also partitions it while it loads. With
`precompute_ref_log_probs` (and no FSDP) there is no copy at all: TRL runs the untrained policy over the data
once before the first step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel

from dftune.config.method_args import MethodArguments
from dftune.config.model_args import ModelArguments
from dftune.errors import DftuneError
from dftune.models.loading import load_adapter, load_model, load_trainable_model, lora_config

logger = logging.getLogger(__name__)


@dataclass
class PolicyAndReference:
    """What DPOTrainer is given: the policy, an explicit reference or None, and a LoRA config for TRL to apply."""

    policy: PreTrainedModel
    reference: PreTrainedModel | None
    peft_config: LoraConfig | None
    description: str


def load_policy_and_reference(
    model_args: ModelArguments,
    method: MethodArguments,
    *,
    adapter: str | None,
    reference_model: str | None,
    precompute_ref_log_probs: bool,
    gradient_checkpointing: bool,
    fsdp: bool,
) -> PolicyAndReference:
    """Load the models of the table above (`adapter`: adapter_name_or_path, `reference_model`:
    ref_model_name_or_path). Call after the distributed state is set up (ZeRO-3 loads sharded). `fsdp`: the run
    shards with FSDP, where the full-model set-up keeps its reference copy even with precompute_ref_log_probs."""
    policy = load_trainable_model(model_args, method, gradient_checkpointing=gradient_checkpointing)
    peft_config = None
    if adapter is not None:
        try:
            policy = load_adapter(policy, adapter, trainable=True)
        except (OSError, ValueError) as err:
            raise DftuneError(f"cannot load adapter_name_or_path {adapter!r}: {err}") from None
        description = f"the adapter {adapter}, frozen copy"
    elif method.finetuning_type == "lora":
        peft_config = lora_config(method)
        description = "the base model with the LoRA adapters disabled"
    else:
        description = "a frozen copy of the starting model"

    if reference_model is None and method.finetuning_type == "full" and precompute_ref_log_probs and not fsdp:
        description = "the starting model, run once before training (precompute_ref_log_probs)"
        return PolicyAndReference(policy, None, peft_config, description)
    reference, own = frozen_reference(model_args, method.finetuning_type, reference_model)
    return PolicyAndReference(policy, reference, peft_config, own or description)


def frozen_reference(
    model_args: ModelArguments, finetuning_type: str, reference_model: str | None
) -> tuple[PreTrainedModel | None, str | None]:
    """The reference a policy is compared with, frozen: `reference_model` when given, else for full fine-tuning a
    copy of the starting model loaded again, else None (LoRA: the base with the adapters disabled, no copy).
    Returns (model or None, a description when it is a separate model)."""
    if reference_model is not None:
        reference = load_model(replace(model_args, model_name_or_path=reference_model))
        description = f"the separate model {reference_model}"
    elif finetuning_type == "full":
        reference, description = load_model(model_args), "a frozen copy of the starting model"
    else:
        return None, None
    reference.requires_grad_(False)
    reference.eval()
    return reference, description


def check_reference(model: PreTrainedModel, *, adapter: str | None, reference_model: str | None) -> None:
    """The adapter set-up relies on TRL copying the adapter into a frozen "ref" one: fail loudly if it did not."""
    if adapter is None or reference_model is not None:
        return
    if not isinstance(model, PeftModel) or "ref" not in model.peft_config:
        raise DftuneError("this TRL version did not copy the adapter into a frozen reference adapter; "
                          "dftune is tested with trl 1.16")
    trainable_ref = [name for name, p in model.named_parameters() if ".ref." in name and p.requires_grad]
    if trainable_ref:
        raise DftuneError(f"the reference adapter is trainable ({trainable_ref[0]}); dftune is tested with trl 1.16")
