"""Stage dpo: preference data validated like SFT data, the reference-model set-ups, and a thin DPOTrainer adapter.

Module order: trainer > reference, data. The package sits between `train.run` (which dispatches stage dpo here)
and `train.model`, `data`, `config`; the loss and its metrics are TRL's (trl 1.16).
"""

from dftune.preference.data import prepare_preference_datasets
from dftune.preference.reference import PolicyAndReference, load_policy_and_reference
from dftune.preference.trainer import PreferenceTrainer, build_dpo_trainer, dpo_config

__all__ = [
    "PolicyAndReference",
    "PreferenceTrainer",
    "build_dpo_trainer",
    "dpo_config",
    "load_policy_and_reference",
    "prepare_preference_datasets",
]
