"""Keys that users' existing scripts and YAML files write but our dataclasses do not: one table, one place.

Each entry maps an old key to the keys that replace it (renamed flags, transformers' removed arguments,
LLaMA-Factory and dLLM-Factory spellings), plus environment variables where transformers now reads the setting from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dftune.errors import DftuneError


@dataclass
class Translation:
    """What one old key becomes: new keys, environment variables and a note for the log."""

    keys: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


def _rename(new: str, why: str) -> Callable[[Any], Translation]:
    return lambda value: Translation(keys={new: value}, note=f"mapped to {new} ({why})")


def _drop(why: str) -> Callable[[Any], Translation]:
    return lambda value: Translation(note=f"ignored ({why})")


LEGACY_KEYS: dict[str, Callable[[Any], Translation]] = {
    "evaluation_strategy": _rename("eval_strategy", "renamed in transformers 4.46"),
    "no_cuda": _rename("use_cpu", "renamed in transformers 4.34"),
    "include_inputs_for_metrics": _rename("include_for_metrics", "renamed in transformers 4.47"),
    "per_gpu_train_batch_size": _rename("per_device_train_batch_size", "removed in transformers 5"),
    "per_gpu_eval_batch_size": _rename("per_device_eval_batch_size", "removed in transformers 5"),
    "warmup_ratio": _rename("warmup_steps", "transformers 5 reads a value below 1 in warmup_steps as a ratio"),
    "cutoff_len": _rename("max_length", "LLaMA-Factory's name"),
    "val_size": lambda value: Translation(
        keys={"validation_split_percentage": float(value) * 100},
        note="mapped to validation_split_percentage (LLaMA-Factory's fraction, as a percentage)",
    ),
    "group_by_length": lambda value: Translation(
        keys={"train_sampling_strategy": "group_by_length"} if _truthy(value) else {},
        note="mapped to train_sampling_strategy: group_by_length (transformers 5)",
    ),
    "adafactor": lambda value: Translation(
        keys={"optim": "adafactor"} if _truthy(value) else {}, note="mapped to optim: adafactor (transformers 5)"
    ),
    "logging_dir": lambda value: Translation(
        env={"TENSORBOARD_LOGGING_DIR": str(value)},
        note="set as TENSORBOARD_LOGGING_DIR (transformers 5 removed --logging_dir)",
    ),
    # Seed 003 (dLLM-Factory's sft/config/sft/default_config.yaml).
    "model_name": _rename("model_name_or_path", "dLLM-Factory's name"),
    "local_batch_size": _rename("per_device_train_batch_size", "dLLM-Factory's name"),
    "num_epochs": _rename("num_train_epochs", "dLLM-Factory's name"),
    "grad_accum_steps": _rename("gradient_accumulation_steps", "dLLM-Factory's name"),
    "job_name": _rename("run_name", "dLLM-Factory's name"),
    "train_data": _rename("data_files", "dLLM-Factory's name: a local .json list of records or a dataset name"),
    "save_safetensors": _drop("transformers 5 always saves safetensors"),
    "include_tokens_per_second": _drop("removed in transformers 5"),
    "use_mps_device": _drop("removed in transformers 5; MPS is used when available"),
    "overwrite_cache": _drop("dftune caches tokenised data by a fingerprint of its content and settings"),
    # LLaMA-Factory's examples (train_lora/*_lora_sft.yaml, *_lora_dpo.yaml); its dataset, dataset_dir, template,
    # max_samples and plot_loss are DataArguments keys of their own.
    "pref_beta": _rename("beta", "LLaMA-Factory's name for stage dpo's beta"),
    "pref_loss": lambda value: _pref_loss(value),
    # TRL's SFTConfig (loss_type under stage sft: see stage_aliases).
    "padding_free": lambda value: Translation(keys={"packing": _truthy(value)}, note="mapped to packing (TRL's name)"),
    "assistant_only_loss": lambda value: _always("assistant_only_loss", value),
    "completion_only_loss": lambda value: _always("completion_only_loss", value),
    "dataset_num_proc": _rename("preprocessing_num_workers", "TRL's name"),
}

# LLaMA-Factory's pref_loss values that TRL's DPOTrainer has as a loss_type, and those it trains elsewhere.
_TRL_DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                   "aot_pair", "discopop", "apo_zero", "apo_down", "sft")  # fmt: skip
_SFT_LOSS_TYPES = {"nll": "sft", "dft": "dft"}  # TRL SFTConfig.loss_type -> our loss


def _pref_loss(value: Any) -> Translation:
    names = [name.strip() for name in str(value).split(",") if name.strip()]
    unknown = [name for name in names if name not in _TRL_DPO_LOSSES]
    if unknown:
        raise DftuneError(f"pref_loss: {', '.join(unknown)} is not a loss of TRL's DPOTrainer (dftune's stage dpo); "
                          f"use one of {', '.join(_TRL_DPO_LOSSES)} (orpo, simpo and kto_pair are other trainers)")
    return Translation(keys={"loss_type": names}, note="mapped to loss_type (LLaMA-Factory's name; TRL's losses)")


def _always(key: str, value: Any) -> Translation:
    """TRL's label switches: dftune labels the assistant replies (the completion) only, always."""
    if not _truthy(value):
        raise DftuneError(f"{key}: false would train on the prompt too; dftune trains on the assistant replies only "
                          "(mask_history: true for the last reply only)")
    return Translation(note="accepted (dftune labels only the assistant replies)")


def stage_aliases(values: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Keys whose meaning depends on the stage. `loss_type` is TRL's DPO loss under stage dpo (a key of its own);
    under stage sft it is TRL SFTConfig's `loss_type: nll | dft`, our `loss: sft | dft`. `values` maps keys to
    parse's values (with `.value` and `.origin`)."""
    stage = values.get("stage")
    item = values.get("loss_type")
    if item is None or (stage is not None and str(stage.value) != "sft"):
        return values
    loss = _SFT_LOSS_TYPES.get(str(item.value).lower())
    if loss is None:
        raise DftuneError(f"{item.origin}: loss_type {item.value!r} under stage sft is TRL SFTConfig's: nll or dft "
                          "(or use loss: sft, dft, ...)")  # fmt: skip
    notes.append(f"{item.origin}: loss_type {item.value} mapped to loss: {loss} (TRL SFTConfig's name under stage sft)")
    renamed = {("loss" if key == "loss_type" else key): v for key, v in values.items()}
    renamed["loss"] = replace(item, value=loss)
    return renamed


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in {"true", "1", "yes"}


def translate(key: str, value: Any) -> Translation | None:
    """The translation of an old key, or None when the key is not a legacy one."""
    rule = LEGACY_KEYS.get(key)
    return None if rule is None else rule(value)
