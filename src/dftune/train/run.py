"""One supervised run, top to bottom: check the data, load the model, train with the objective, save.

Stage sft trains a causal LM with `ObjectiveTrainer`; stage dllm a masked-diffusion LM with `DiffusionTrainer`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dftune.config.parse import CONFIG_FILE_NAME, RunConfig, apply_env
from dftune.data import DataCollatorForChat, configure_packing, prepare_datasets
from dftune.diffusion.collator import DiffusionCollator
from dftune.diffusion.model import load_diffusion_model, resolve_mask_token_id
from dftune.diffusion.trainer import DiffusionTrainer
from dftune.errors import DftuneError
from dftune.train.model import apply_lora, load_model, load_tokenizer
from dftune.train.trainer import ObjectiveTrainer

logger = logging.getLogger(__name__)


def objective_kwargs(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of the chosen objective, from the method keys."""
    method = config.method
    if method.loss == "dft":
        return {"alpha": method.effective_dft_alpha}
    if method.loss == "bft":
        return {"group_size": method.bft_group_size, "gamma": method.bft_gamma}
    return {}


def build_trainer(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> ObjectiveTrainer:
    """Data first (bad records stop the run before any model loads), then model, LoRA and Trainer."""
    if config.method.stage not in ("sft", "dllm"):
        raise DftuneError(f"stage: {config.method.stage} is not available yet; this version trains sft and dllm")
    if config.method.stage == "dllm" and config.data.packing:
        raise DftuneError("stage: dllm pads every row with EOS (answer tokens); set packing: false")
    if not config.data.data_files:
        raise DftuneError("data_files is required: one or more .jsonl/.json/.parquet files, globs or folders")
    apply_env(config)
    for note in config.notes:
        logger.info("config: %s", note)

    # Touching `device` sets up torch.distributed (and DeepSpeed): ZeRO-3 partitions the weights while they load.
    logger.info("device %s, world size %d", config.training.device, config.training.world_size)
    tokenizer = load_tokenizer(config.model)
    output_dir = Path(config.training.output_dir)
    with config.training.main_process_first(desc="data preparation"):  # the others then hit its cache
        prepared = prepare_datasets(
            config.data, tokenizer, seed=config.training.seed, report_path=output_dir / "data_report.json"
        )
    model = load_diffusion_model(config.model) if config.method.stage == "dllm" else load_model(config.model)
    if config.data.packing:
        configure_packing(model.config)
    if config.model.enable_gradient_checkpointing:
        config.training.gradient_checkpointing = True
    if config.method.finetuning_type == "lora":
        if config.training.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed LoRA needs grads flowing into frozen embeddings
        model = apply_lora(model, config.method)
    if prepared.eval is None and config.training.eval_strategy != "no":
        raise DftuneError(
            f"eval_strategy: {config.training.eval_strategy.value} needs eval data: "
            "set eval_files or validation_split_percentage"
        )
    if config.method.stage == "dllm":
        mask_token_id = resolve_mask_token_id(config.method.mask_token_id, model.config, tokenizer)
        return DiffusionTrainer(
            model=model,
            args=config.training,
            train_dataset=prepared.train,
            eval_dataset=prepared.eval,
            data_collator=DiffusionCollator(mask_token_id, tokenizer.eos_token_id, eps=config.method.diffusion_eps),
            processing_class=tokenizer,
            callbacks=callbacks,
            objective=config.method.loss,
            dft_alpha=config.method.effective_dft_alpha,
        )
    return ObjectiveTrainer(
        model=model,
        args=config.training,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        data_collator=DataCollatorForChat(tokenizer.pad_token_id, packing=config.data.packing),
        processing_class=tokenizer,
        callbacks=callbacks,
        objective=config.method.loss,
        objective_kwargs=objective_kwargs(config),
        fused_loss=config.method.fused_loss,
    )


def run_sft(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> ObjectiveTrainer:
    """Train, evaluate when there is eval data, and save model (or adapter), tokenizer and resolved config."""
    trainer = build_trainer(config, callbacks)
    output_dir = Path(config.training.output_dir)
    logger.info("objective %s %s, %d training samples", config.method.loss, objective_kwargs(config),
                len(trainer.train_dataset))
    trainer.train(resume_from_checkpoint=config.training.resume_from_checkpoint)
    if trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if trainer.is_world_process_zero():
        (output_dir / CONFIG_FILE_NAME).write_text(config.to_yaml(), encoding="utf-8")
    return trainer
