"""One run, top to bottom: parse the config, set up what every stage shares, let the stage build its trainer,
then train, evaluate, save and summarise.

`parse_config` is the registry's (`dftune.stages`), named here too so a caller parses and runs from one module;
`dftune train --help` imports its parser from `dftune.stages`, which imports no trainer (this module imports the whole
runtime).

The stage (sft, dllm, dpo) comes from the registry `dftune.stages.STAGES`: each stage owns its keys
(`dftune.stages.keys`) and a module of its data, collator and trainer. What they share is here, once: the environment
legacy keys asked for, trackers, the model-folder and output_dir checks, resume, gradient checkpointing, the run
header, signals and the summary.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback, set_seed

from dftune.config.machine import CPU_NOTE, accelerator_available
from dftune.config.parse import CONFIG_FILE_NAME, RunConfig, apply_env
from dftune.data.report import REPORT_FILE
from dftune.errors import DftuneError, RunStopped
from dftune.models.loading import check_vocabulary
from dftune.outputs import output_folder, write_text
from dftune.runtime.checkpoints import resolve_run_dir
from dftune.runtime.guards import GuardedUpdates
from dftune.runtime.objective_trainer import ObjectiveTrainer
from dftune.runtime.console import use_console
from dftune.runtime.header import RunDescription, RunHeader, RunOutcome, log_summary
from dftune.runtime.parallelism import check_parallelism
from dftune.runtime.preflight import check_model_path
from dftune.runtime.run_lock import run_lock
from dftune.runtime.signals import SaveOnSignal
from dftune.runtime.tracking import tracker_callbacks
from dftune.stages import STAGES
from dftune.stages import parse_config  # noqa: F401 - named here too: callers parse and run from one module

logger = logging.getLogger(__name__)
PLOT_FILE = "training_curves.png"


def build_trainer(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> Trainer:
    """The set-up every stage shares (checks that take seconds first), then the stage's own build."""
    if not config.data.has_training_data():
        raise DftuneError("data_files is required: one or more .jsonl/.json/.parquet files, globs or folders (or "
                          "dataset: entries of LLaMA-Factory's dataset_info.json)")
    apply_env(config)
    for note in config.notes:
        logger.info("config: %s", note)
    if config.training.use_cpu and not accelerator_available():
        logger.info("%s", CPU_NOTE)

    if config.training.ddp_find_unused_parameters is None:
        # Every trainable parameter takes part in our forward (the fused head included): no per-step search for
        # unused ones, which DDP would warn about on every rank. Models that skip parameters (MoE) set it true.
        config.training.ddp_find_unused_parameters = False
    # Touching `device` sets up torch.distributed (and DeepSpeed): ZeRO-3 partitions the weights while they load.
    logger.info("device %s, world size %d", config.training.device, config.training.world_size)
    callbacks = [*(callbacks or []), *tracker_callbacks(config.training)]  # before a Trainer reads report_to
    check_model_path(config.model.model_name_or_path)  # these checks take seconds: before data and weights
    config.training.resume_from_checkpoint = resolve_run_dir(config.training, config.reliability)
    if config.model.enable_gradient_checkpointing:
        config.training.gradient_checkpointing = True
    set_seed(config.training.seed)  # what building draws (LoRA's initial A): the Trainer seeds only after it
    trainer = STAGES[config.method.stage].build_trainer(config, callbacks)
    check_vocabulary(trainer.model, trainer.processing_class, f"model_name_or_path {config.model.model_name_or_path}")
    return trainer


def run_inputs(config: RunConfig) -> list[str | None]:
    """What a run reads, that its output_dir must never be nor hold: data, eval data, the registry, the models."""
    registry = [config.data.dataset_dir] if config.data.dataset or config.data.eval_dataset else []
    return [*config.data.data_files, *config.data.eval_files, *registry, config.model.model_name_or_path,
            config.model.ref_model_name_or_path]


def run(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> Trainer:
    """`train_and_save` holding output_dir's lock, once output_dir is known not to be an input, `/`, home or the
    working directory (the lock: the first process of a distributed run takes it for all)."""
    output_dir = output_folder(config.training.output_dir, "output_dir", run_inputs(config))
    with run_lock(output_dir, enabled=os.environ.get("RANK", "0") == "0"):
        return train_and_save(config, callbacks)


def train_and_save(config: RunConfig, callbacks: list[TrainerCallback] | None = None) -> Trainer:
    """Train, evaluate when there is eval data, and save model (or adapter), tokenizer and resolved config."""
    started = time.monotonic()
    trackers = ",".join(config.training.report_to)  # before build_trainer hands swanlab to its own callback
    trainer = build_trainer(config, callbacks)
    use_console(trainer)
    parallelism = check_parallelism(trainer)
    output_dir = Path(config.training.output_dir)
    settings = [f"{key}={value}" for key, value in config.method.objective_kwargs().items()]
    objective = config.stage_args.own_objective() or " ".join(
        [f"stage {config.method.stage}, loss {config.method.loss}", *settings])
    trainer.add_callback(RunHeader(RunDescription(
        model_name=config.model.model_name_or_path, objective=objective, train_samples=len(trainer.train_dataset),
        eval_samples=None if trainer.eval_dataset is None else len(trainer.eval_dataset), trackers=trackers,
        parallelism=parallelism.describe(),
    )))  # fmt: skip
    on_signal = SaveOnSignal()
    trainer.add_callback(on_signal)
    trainer.train(resume_from_checkpoint=config.training.resume_from_checkpoint)
    stop_if_interrupted(trainer, on_signal)
    if trainer.eval_dataset is not None and not evaluated_at(trainer.state.log_history, trainer.state.global_step):
        trainer.evaluate()  # logged once, by the console and to the trackers; the summary repeats its CE
    if trainer.is_fsdp_enabled:  # the final model as one full state dict (from_pretrained), whatever checkpoints use
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(output_dir))
    trainer.save_state()
    targets = trainer.targets_trained() if isinstance(trainer, ObjectiveTrainer) else None  # on every process
    if trainer.is_world_process_zero():
        write_text(output_dir / CONFIG_FILE_NAME, config.to_yaml())
        files = [("config", str(output_dir / CONFIG_FILE_NAME))]
        if config.data.plot_loss:
            files.insert(0, ("curves", str(plot_curves(trainer.state.log_history, output_dir))))
        if (output_dir / REPORT_FILE).exists():
            files.append(("data report", str(output_dir / REPORT_FILE)))
        log_summary(trainer.state.log_history, RunOutcome(
            objective=objective, steps=trainer.state.global_step, seconds=time.monotonic() - started,
            output_dir=str(output_dir), target_tokens=targets, files=files,
        ))  # fmt: skip
    return trainer


def evaluated_at(history: list[dict[str, float]], step: int) -> bool:
    """The last step's evaluation already ran (eval_strategy reached it): a final one would repeat it."""
    return any("eval_loss" in entry and entry.get("step") == step for entry in history)


def plot_curves(history: list[dict[str, float]], output_dir: Path) -> Path:
    """plot_loss (LLaMA-Factory's key): the run's curves (with ce/<source> of each data source, as `dftune plot`
    draws them) as a PNG in output_dir."""
    from dftune.viz.curves import RUN_PANELS, plot_runs

    path = plot_runs({output_dir.name or "run": history}, output_dir / PLOT_FILE, panels=RUN_PANELS, columns=4)
    logger.info("plot_loss: curves in %s", path)
    return path


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
