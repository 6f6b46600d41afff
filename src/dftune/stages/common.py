"""What stage sft and stage dllm share: chat data, the trainable model set-up and an objective's reference model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from dftune.config.data_args import DataArguments
from dftune.config.parse import RunConfig
from dftune.data.collate import configure_packing
from dftune.data.prepare import PreparedData, prepare_datasets
from dftune.data.encode import chat_template
from dftune.data.report import REPORT_FILE
from dftune.errors import DftuneError
from dftune.losses import OBJECTIVES
from dftune.models.loading import apply_lora, load_tokenizer, load_trainable_model, use_end_of_reply_token
from dftune.models.reference import frozen_reference
from dftune.runtime.preflight import check_max_length, check_template, require_eval_data
from dftune.stages.keys import compares_with_start

logger = logging.getLogger(__name__)


def chat_tokenizer(config: RunConfig, *, masked_lm: bool = False) -> PreTrainedTokenizerBase:
    """The run's tokenizer with the chat template the data is rendered with (`with_template_keys`); `max_length`
    checked to leave room for a reply (as `load_checked_tokenizer`). masked_lm (stage dllm): the end-of-reply
    conventions of `use_end_of_reply_token`, and the plain template (`data.encode.PLAIN_TEMPLATE`) instead of ChatML
    for a tokenizer without one."""
    tokenizer = load_tokenizer(config.model)
    if masked_lm:
        use_end_of_reply_token(tokenizer)
    with_template_keys(tokenizer, config.data, config.model.model_name_or_path, masked_lm=masked_lm)
    check_max_length(tokenizer, config.data.max_length)
    return tokenizer


def with_template_keys(tokenizer: PreTrainedTokenizerBase, data: DataArguments, name: str | None, *,
                       masked_lm: bool = False) -> PreTrainedTokenizerBase:  # fmt: skip
    """`tokenizer` (in place) with the chat template the data is rendered with: `chat_template` when given, else
    the tokenizer's own, else ChatML (plain when `masked_lm`). `train` and `dftune data check` share it.

    LLaMA-Factory's `template: <name>` picks one of its built-in templates; dftune renders with the tokenizer's own,
    so the key is accepted with one log line, and is an error when the tokenizer has none and no chat_template is
    given (silently training with ChatML instead of what the user named would not be what they asked for)."""
    origin = f"the tokenizer of {name}"
    if data.chat_template:
        path = Path(data.chat_template).expanduser()
        tokenizer.chat_template = path.read_text(encoding="utf-8") if path.is_file() else data.chat_template
        origin = f"chat_template file {path}" if path.is_file() else "the chat_template key's text"
    if data.template is not None:
        if not tokenizer.chat_template:
            raise DftuneError(f"template: {data.template} names one of LLaMA-Factory's templates; dftune renders with "
                              f"the tokenizer's own chat template and {name} has none: set chat_template (Jinja text "
                              "or a .jinja file), or add one to the model folder")  # fmt: skip
        source = "chat_template" if data.chat_template else f"the tokenizer's own ({name})"
        logger.info("template: %s is LLaMA-Factory's name; dftune renders with %s chat template", data.template, source)
    tokenizer.chat_template = chat_template(tokenizer, "plain" if masked_lm else "ChatML")
    check_template(tokenizer, origin)  # a template Jinja refuses: one error naming where it came from
    return tokenizer


def chat_data(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Tokenised conversations with assistant-only labels; bad records stop the run before any model loads."""
    output_dir = Path(config.training.output_dir)
    with config.training.main_process_first(desc="data preparation"):  # the others then hit its cache
        prepared = prepare_datasets(
            config.data, tokenizer, seed=config.training.seed, report_path=output_dir / REPORT_FILE
        )
    require_eval_data(prepared.eval, config.training)
    return prepared


def trainable_model(config: RunConfig, *, diffusion: bool) -> PreTrainedModel:
    """The model to train, set up for packing and wrapped with LoRA as the config asks."""
    model = load_trainable_model(
        config.model, config.method, gradient_checkpointing=config.training.gradient_checkpointing,
        diffusion=diffusion,
    )  # fmt: skip
    if config.data.packing:
        configure_packing(model.config)
    if config.method.finetuning_type == "lora":
        if config.training.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed LoRA needs grads flowing into frozen embeddings
        model = apply_lora(model, config.method)
    return model


def objective_reference(config: RunConfig) -> PreTrainedModel | None:
    """The frozen reference of an objective with a KL anchor: `ref_model_name_or_path`, else a copy of the starting
    model (full fine-tuning), else None (LoRA: the policy with its adapters disabled, no second copy)."""
    if not compares_with_start(OBJECTIVES[config.method.loss]):
        return None
    reference, description = frozen_reference(
        config.model, config.method.finetuning_type, config.model.ref_model_name_or_path
    )
    logger.info("loss %s compares with %s", config.method.loss,
                description or "the base model with the LoRA adapters disabled")
    return reference


def objective_trainer_kwargs(config: RunConfig, prepared: PreparedData, tokenizer: PreTrainedTokenizerBase,
                             callbacks: list[TrainerCallback]) -> dict[str, Any]:  # fmt: skip
    """What stage sft's and stage dllm's trainers are both given: data, tokenizer, the objective and its head."""
    return dict(
        args=config.training,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
        objective=config.method.loss,
        objective_kwargs=config.method.objective_kwargs(),
        fused_loss=config.method.fused_loss,
        fused_chunk_size=config.method.fused_chunk_size,
        max_nonfinite_steps=config.reliability.max_nonfinite_steps,
        precompute_ref_log_probs=config.method.precompute_ref_log_probs,
        sequence_parallel_size=config.method.sequence_parallel_size,
    )
