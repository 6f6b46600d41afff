"""Stage dpo on TRL's DPOTrainer (tested with trl 1.16.0): our config, data and reference set-up in, TRL's loss out.

What we add to TRL, and why:
- DPOConfig is built from the user's resolved TrainingArguments plus the DPO keys, so TRL's own defaults
  (bf16 on, gradient checkpointing on, learning rate 1e-6, logging every 10 steps) never apply behind the
  user's back: TRL's bf16 default refuses to run on CPU unless told.
- `max_prompt_length`, which TRL 1.16 dropped: a prompt keeps its last `max_prompt_length` tokens (what older
  TRL did), applied after TRL tokenises and before its filter of prompts that fill `max_length`.

Metrics need nothing from us: TRL 1.16's `_compute_loss` appends each micro-batch's value (already gathered
over processes) to `self._metrics`, and its `log` averages the lists and clears them, so the logged
`rewards/*`, `logps/*`, `logits/*` are means over every micro-batch of the logging window, on every process.
Micro-batches hold the same number of pairs (but a short last one), so this equals the per-pair mean.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from trl import DPOConfig, DPOTrainer

from dftune.config.parse import RunConfig
from dftune.data.encode import chat_template
from dftune.errors import DftuneError
from dftune.preference.data import prepare_preference_datasets
from dftune.preference.reference import check_reference, load_policy_and_reference
from dftune.train.guards import GuardedUpdates
from dftune.train.model import load_tokenizer

logger = logging.getLogger(__name__)


def dpo_config(config: RunConfig) -> DPOConfig:
    """Every TrainingArguments field as the user resolved it, plus the DPO keys."""
    training, method = config.training, config.method
    values = {f.name: getattr(training, f.name) for f in fields(TrainingArguments) if f.init}
    return DPOConfig(
        **values,
        beta=method.beta,
        loss_type=list(method.loss_type),
        max_length=config.data.max_length,
        precompute_ref_log_probs=method.precompute_ref_log_probs,
        dataset_num_proc=config.data.preprocessing_num_workers,
        trust_remote_code=config.model.trust_remote_code,
    )


class PreferenceTrainer(GuardedUpdates, DPOTrainer):
    """DPOTrainer with `max_prompt_length` back and dftune's guards (non-finite steps skipped, complete-marked
    checkpoints); the loss and its metrics are TRL's."""

    def __init__(
        self, *args: Any, max_prompt_length: int | None = None, max_nonfinite_steps: int = 3, **kwargs: Any
    ) -> None:
        self.max_prompt_length = max_prompt_length  # read by _prepare_dataset inside DPOTrainer.__init__
        super().__init__(*args, **kwargs)
        self.init_guards(max_nonfinite_steps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)  # fmt: skip
        if model.training:
            self.flag_nonfinite(result[0] if return_outputs else result)
        return result

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: DPOConfig, dataset_name: str) -> Dataset:
        if self.max_prompt_length is None:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        # TRL drops pairs whose untruncated prompt fills max_length; truncate first, then apply that rule.
        unlimited = copy.copy(args)
        unlimited.max_length = None
        dataset = super()._prepare_dataset(dataset, processing_class, unlimited, dataset_name)
        keep, limit = self.max_prompt_length, args.max_length
        with args.main_process_first(desc="max_prompt_length"):  # the others then read its cache files
            dataset = dataset.map(lambda row: {"prompt_ids": row["prompt_ids"][-keep:]}, desc="max_prompt_length")
            if limit is not None:
                dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < limit)
        return dataset


def build_dpo_trainer(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> PreferenceTrainer:
    """Data first (bad records stop the run before any model loads), then policy and reference, then TRL."""
    if config.data.packing:
        raise DftuneError("stage: dpo pads each pair (TRL 1.16 has no packing for DPO); set packing: false")
    tokenizer = load_tokenizer(config.model)
    tokenizer.chat_template = chat_template(tokenizer)  # TRL renders the messages itself: ChatML when none
    with config.training.main_process_first(desc="preference data"):
        prepared = prepare_preference_datasets(
            config.data,
            tokenizer,
            max_prompt_length=config.method.max_prompt_length,
            seed=config.training.seed,
            report_path=Path(config.training.output_dir) / "data_report.json",
        )
    if prepared.eval is None and config.training.eval_strategy != "no":
        raise DftuneError(
            f"eval_strategy: {config.training.eval_strategy.value} needs eval data: "
            "set eval_files or validation_split_percentage"
        )
    if config.model.enable_gradient_checkpointing:
        config.training.gradient_checkpointing = True
    models = load_policy_and_reference(config)
    trainer = PreferenceTrainer(
        model=models.policy,
        ref_model=models.reference,
        args=dpo_config(config),
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=models.peft_config,
        max_prompt_length=config.method.max_prompt_length,
        max_nonfinite_steps=config.reliability.max_nonfinite_steps,
    )
    check_reference(trainer.model, config)
    logger.info("DPO %s, beta %g, reference: %s, %d training pairs", config.method.loss_type, config.method.beta,
                models.description, len(prepared.train))
    return trainer
