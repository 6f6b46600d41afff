"""Stage dpo on TRL's DPOTrainer (tested with trl 1.16.0): our config, data and reference set-up in, TRL's loss out.

Its keys are `DpoArguments`; its data `dftune.data.preference` (validated like SFT data); its policy and reference
set-ups `dftune.models.reference`.

What we add to TRL, and why:
- DPOConfig is built from the user's resolved TrainingArguments plus the DPO keys, so TRL's own defaults
  (bf16 on, gradient checkpointing on, learning rate 1e-6, logging every 10 steps) never apply behind the
  user's back: TRL's bf16 default refuses to run on CPU unless told.
- Pairs over the length are cut, never dropped: `dftune.data.preference` tokenises them as TRL does and fits them
  to `max_length`, `max_prompt_length` and `max_completion_length` (the two TRL 1.16 dropped) with the prompt cut
  from the left (`truncation_mode: keep_end`, the default) keeping its generation header, and counts what it cut in
  the data report; TRL gets the token ids and its own preparation (which drops pairs whose prompt fills
  `max_length`) is skipped.

Metrics need nothing from us: TRL 1.16's `_compute_loss` appends each micro-batch's value (already gathered
over processes) to `self._metrics`, and its `log` averages the lists and clears them, so the logged
`rewards/*`, `logps/*`, `logits/*` are means over every micro-batch of the logging window, on every process.
Micro-batches hold the same number of pairs (but a short last one), so this equals the per-pair mean.
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from trl import DPOConfig, DPOTrainer

from dftune.config.parse import RunConfig
from dftune.data.encode import chat_template
from dftune.data.preference import PREFERENCE, prepare_preference_datasets
from dftune.data.report import REPORT_FILE
from dftune.models.reference import check_reference, load_policy_and_reference
from dftune.runtime.guards import GuardedUpdates
from dftune.runtime.preflight import require_eval_data
from dftune.stages.common import chat_tokenizer
from dftune.stages.keys import DpoArguments, dpo_keys, preference_limits

logger = logging.getLogger(__name__)


def dpo_config(config: RunConfig) -> DPOConfig:
    """Every TrainingArguments field as the user resolved it, plus the DPO keys."""
    training, keys = config.training, dpo_keys(config)
    values = {f.name: getattr(training, f.name) for f in fields(TrainingArguments) if f.init}
    return DPOConfig(
        **values,
        beta=keys.beta,
        loss_type=list(keys.loss_type),
        max_length=config.data.max_length,
        precompute_ref_log_probs=config.method.precompute_ref_log_probs,
        dataset_num_proc=config.data.preprocessing_num_workers,
        trust_remote_code=config.model.trust_remote_code,
    )


class PreferenceTrainer(GuardedUpdates, DPOTrainer):
    """DPOTrainer on dftune's tokenised pairs (already fitted to the limits) with dftune's guards (non-finite steps
    skipped, complete-marked checkpoints); the loss and its metrics are TRL's."""

    def __init__(self, *args: Any, max_nonfinite_steps: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.init_guards(max_nonfinite_steps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)  # fmt: skip
        if model.training:
            self.flag_nonfinite(result[0] if return_outputs else result)
        return result

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: DPOConfig, dataset_name: str) -> Dataset:
        if set(PREFERENCE) <= set(dataset.column_names):
            return dataset  # dftune.data.preference tokenised it as TRL would, then fitted it to the limits
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def uses_fsdp(training: TrainingArguments) -> bool:
    """FSDP from `--fsdp` or from `accelerate launch --config_file` (which says so in the environment)."""
    return bool(training.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")


def build_trainer(config: RunConfig, callbacks: list[TrainerCallback]) -> PreferenceTrainer:
    """Data first (bad records stop the run before any model loads), then policy and reference, then TRL."""
    keys = dpo_keys(config)
    tokenizer = chat_tokenizer(config)
    tokenizer.chat_template = chat_template(tokenizer)  # TRL renders the messages itself: ChatML when none
    with config.training.main_process_first(desc="preference data"):
        prepared = prepare_preference_datasets(
            config.data,
            tokenizer,
            limits=preference_limits(config),
            seed=config.training.seed,
            report_path=Path(config.training.output_dir) / REPORT_FILE,
        )
    require_eval_data(prepared.eval, config.training)
    models = load_policy_and_reference(
        config.model, config.method, adapter=keys.adapter_name_or_path, reference_model=config.model.ref_model_name_or_path,
        precompute_ref_log_probs=config.method.precompute_ref_log_probs,
        gradient_checkpointing=config.training.gradient_checkpointing, fsdp=uses_fsdp(config.training),
    )  # fmt: skip
    trainer = PreferenceTrainer(
        model=models.policy,
        ref_model=models.reference,
        args=dpo_config(config),
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=models.peft_config,
        max_nonfinite_steps=config.reliability.max_nonfinite_steps,
    )
    check_reference(trainer.model, adapter=keys.adapter_name_or_path, reference_model=config.model.ref_model_name_or_path)
    logger.info("DPO %s, beta %g, reference: %s, %d training pairs", keys.loss_type, keys.beta, models.description,
                len(prepared.train))
    return trainer
