"""One supervised run, top to bottom: check the data, load the model, train with the objective, save.

Stage sft trains a causal LM with `ObjectiveTrainer`; stage dllm a masked-diffusion LM with `DiffusionTrainer`;
stage dpo a causal LM on preference pairs with TRL's DPOTrainer (`dftune.preference`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from dftune.config.parse import CONFIG_FILE_NAME, RunConfig, apply_env
from dftune.data import DataCollatorForChat, configure_packing, prepare_datasets
from dftune.diffusion.collator import DiffusionCollator
from dftune.diffusion.model import load_diffusion_model, resolve_mask_token_id
from dftune.diffusion.trainer import DiffusionTrainer
from dftune.errors import DftuneError, RunStopped
from dftune.preference import build_dpo_trainer
from dftune.train.checkpoints import resolve_run_dir
from dftune.train.guards import GuardedUpdates
from dftune.train.header import RunDescription, RunHeader, log_summary
from dftune.train.model import apply_lora, load_model, load_tokenizer
from dftune.train.parallelism import check_parallelism
from dftune.train.preflight import check_max_length, check_model_path
from dftune.train.signals import SaveOnSignal
from dftune.train.tracking import tracker_callbacks
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


def build_trainer(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> Trainer:
    """Data first (bad records stop the run before any model loads), then model, LoRA and Trainer."""
    if config.method.stage == "dllm" and config.data.packing:
        raise DftuneError("stage: dllm pads every row with EOS (answer tokens); set packing: false")
    if not config.data.data_files:
        raise DftuneError("data_files is required: one or more .jsonl/.json/.parquet files, globs or folders")
    apply_env(config)
    for note in config.notes:
        logger.info("config: %s", note)

    if config.training.ddp_find_unused_parameters is None:
        # Every trainable parameter takes part in our forward (the fused head included): no per-step search for
        # unused ones, which DDP would warn about on every rank. Models that skip parameters (MoE) set it true.
        config.training.ddp_find_unused_parameters = False
    # Touching `device` sets up torch.distributed (and DeepSpeed): ZeRO-3 partitions the weights while they load.
    logger.info("device %s, world size %d", config.training.device, config.training.world_size)
    callbacks = [*(callbacks or []), *tracker_callbacks(config.training)]  # before a Trainer reads report_to
    check_model_path(config.model.model_name_or_path)  # these checks take seconds: before data and weights
    config.training.resume_from_checkpoint = resolve_run_dir(config.training, config.reliability)
    if config.method.stage == "dpo":  # TRL's DPOTrainer with our data checks, reference set-ups and keys
        return build_dpo_trainer(config, callbacks)
    tokenizer = load_tokenizer(config.model)
    check_max_length(tokenizer, config.data.max_length)
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
            max_nonfinite_steps=config.reliability.max_nonfinite_steps,
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
        max_nonfinite_steps=config.reliability.max_nonfinite_steps,
    )


def run_sft(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> Trainer:
    """Train, evaluate when there is eval data, and save model (or adapter), tokenizer and resolved config."""
    started = time.monotonic()
    trackers = ",".join(config.training.report_to)  # before build_trainer hands swanlab to its own callback
    trainer = build_trainer(config, callbacks)
    parallelism = check_parallelism(trainer)
    output_dir = Path(config.training.output_dir)
    settings = [f"{key}={value}" for key, value in objective_kwargs(config).items()]
    objective = " ".join([f"stage {config.method.stage}, loss {config.method.loss}", *settings])
    trainer.add_callback(RunHeader(RunDescription(
        model_name=config.model.model_name_or_path, objective=objective, train_samples=len(trainer.train_dataset),
        eval_samples=None if trainer.eval_dataset is None else len(trainer.eval_dataset), trackers=trackers,
        parallelism=parallelism.describe(),
    )))  # fmt: skip
    on_signal = SaveOnSignal()
    trainer.add_callback(on_signal)
    trainer.train(resume_from_checkpoint=config.training.resume_from_checkpoint)
    stop_if_interrupted(trainer, on_signal)
    if trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())
    if trainer.is_fsdp_enabled:  # the final model as one full state dict (from_pretrained), whatever checkpoints use
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if trainer.is_world_process_zero():
        (output_dir / CONFIG_FILE_NAME).write_text(config.to_yaml(), encoding="utf-8")
        log_summary(trainer.state.log_history, steps=trainer.state.global_step, seconds=time.monotonic() - started,
                    output_dir=str(output_dir))
    return trainer


def stop_if_interrupted(trainer: Trainer, on_signal: SaveOnSignal) -> None:
    """After a signal or too many non-finite steps the last checkpoint is the result: say where, exit non-zero."""
    checkpoint = f"{trainer.args.output_dir}/checkpoint-{trainer.state.global_step}"
    if on_signal.stopped:
        name = on_signal.received.name if on_signal.received else "a signal on another process"
        code = 128 + on_signal.received.value if on_signal.received else 1
        raise RunStopped(f"stopped by {name} at step {trainer.state.global_step}; saved {checkpoint}. Continue "
                         "with --resume_from_checkpoint auto", exit_code=code)
    if isinstance(trainer, GuardedUpdates) and trainer.stopped_nonfinite_at is not None:
        raise RunStopped(
            f"stopped at step {trainer.stopped_nonfinite_at}: {trainer.max_nonfinite_steps} steps in a row had a "
            f"non-finite loss or gradient norm (each update skipped). {checkpoint} holds the last good weights; "
            "lower learning_rate, set max_grad_norm, use bf16 instead of fp16, or check the data of those steps, "
            "then continue with --resume_from_checkpoint auto", exit_code=1,
        )
