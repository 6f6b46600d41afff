"""What stage sft and stage dllm share: the objective's settings, chat data, and the trainable model set-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dftune.config.parse import RunConfig
from dftune.data import PreparedData, configure_packing, prepare_datasets
from dftune.models.loading import apply_lora, load_trainable_model
from dftune.runtime.preflight import require_eval_data


def objective_kwargs(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of the chosen objective, from the method keys."""
    method = config.method
    if method.loss == "dft":
        return {"alpha": method.effective_dft_alpha}
    if method.loss == "bft":
        return {"group_size": method.bft_group_size, "gamma": method.bft_gamma}
    return {}


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
