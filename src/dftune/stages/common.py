"""What stage sft and stage dllm share: chat data, the trainable model set-up and an objective's reference model."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dftune.config.parse import RunConfig
from dftune.data import PreparedData, configure_packing, prepare_datasets
from dftune.losses import OBJECTIVES, REF_KL
from dftune.models.loading import apply_lora, load_trainable_model
from dftune.models.reference import frozen_reference
from dftune.runtime.preflight import require_eval_data

logger = logging.getLogger(__name__)


def chat_data(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Tokenised conversations with assistant-only labels; bad records stop the run before any model loads."""
    output_dir = Path(config.training.output_dir)
    with config.training.main_process_first(desc="data preparation"):  # the others then hit its cache
        prepared = prepare_datasets(
            config.data, tokenizer, seed=config.training.seed, report_path=output_dir / "data_report.json"
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


def check_reference_keys(config: RunConfig) -> None:
    """`ref_model_name_or_path` belongs to stage dpo and to objectives with a KL anchor (ValueError: parse reports it)."""
    if config.model.ref_model_name_or_path is not None and REF_KL not in OBJECTIVES[config.method.loss].needs:
        anchored = [name for name, objective in OBJECTIVES.items() if REF_KL in objective.needs]
        raise ValueError(f"ref_model_name_or_path applies to stage: dpo and to loss: {', '.join(anchored)} (a KL "
                         f"anchor), not to stage {config.method.stage} with loss: {config.method.loss}")


def objective_reference(config: RunConfig) -> PreTrainedModel | None:
    """The frozen reference of an objective with a KL anchor: `ref_model_name_or_path`, else a copy of the starting
    model (full fine-tuning), else None (LoRA: the policy with its adapters disabled, no second copy)."""
    if REF_KL not in OBJECTIVES[config.method.loss].needs:
        return None
    reference, description = frozen_reference(
        config.model, config.method.finetuning_type, config.model.ref_model_name_or_path
    )
    logger.info("loss %s compares with %s", config.method.loss,
                description or "the base model with the LoRA adapters disabled")
    return reference
