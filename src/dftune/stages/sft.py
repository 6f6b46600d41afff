"""Stage sft: a causal LM trained on conversations (assistant-only labels) with a dftune objective.

The objective (`loss`: sft, dft, bft, and its settings) is a method key; the trainer is the runtime's
`ObjectiveTrainer`, with the loss head fused where that is exact (`fused_loss`).
"""

from __future__ import annotations

from transformers import TrainerCallback

from dftune.config.parse import RunConfig
from dftune.data.collate import DataCollatorForChat
from dftune.runtime.objective_trainer import ObjectiveTrainer
from dftune.stages.common import (
    chat_data,
    chat_tokenizer,
    objective_reference,
    objective_trainer_kwargs,
    trainable_model,
)


def build_trainer(config: RunConfig, callbacks: list[TrainerCallback]) -> ObjectiveTrainer:
    """Data first (bad records stop the run before any model loads), then model, LoRA and Trainer."""
    tokenizer = chat_tokenizer(config)
    prepared = chat_data(config, tokenizer)
    model = trainable_model(config, diffusion=False)
    return ObjectiveTrainer(
        model=model,
        data_collator=DataCollatorForChat(tokenizer.pad_token_id, packing=config.data.packing),
        reference=objective_reference(config),
        source_names=prepared.source_names,
        **objective_trainer_kwargs(config, prepared, tokenizer, callbacks),
    )
