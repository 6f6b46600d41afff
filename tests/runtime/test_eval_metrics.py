"""Evaluation metrics are dataset-level means: `trainer.evaluate()` over batches of unequal sizes equals one
`compute_objective` over the whole eval set, in each objective's own unit (SFT's target tokens, BFT's samples,
stage dllm's answer tokens). A mean of batch means, or a loss weighted by the wrong unit, fails here; eval_loss
picks the best checkpoint and fills compare's table."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments

from dftune.data.collate import DataCollatorForChat
from dftune.losses import compute_objective, diffusion_objective
from dftune.models.presets import init_model
from dftune.runtime.objective_trainer import ObjectiveTrainer
from dftune.stages.dllm import DiffusionCollator, DiffusionTrainer


def records(n: int = 5, seed: int = 0) -> list[dict[str, list[int]]]:
    """Prompts of 3-12 tokens and replies of 1-15: every batch of 2 (and the last, of 1) has its own counts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(5, 100) for _ in range(rng.randint(3, 12))]
        reply = [rng.randrange(5, 100) for _ in range(rng.randint(1, 15))]
        out.append({"input_ids": prompt + reply, "labels": [-100] * len(prompt) + reply})
    return out


def args(tmp_path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_eval_batch_size=2)


def padded(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The whole eval set as one batch, right-padded."""
    return DataCollatorForChat(pad_token_id=0)(features)


@pytest.mark.parametrize("objective, kwargs", [("sft", {}), ("dft", {"alpha": 0.5}), ("bft", {"group_size": 3})])
def test_eval_metrics_equal_one_objective_over_the_eval_set(tmp_path, objective, kwargs):
    model_dir = init_model("tiny-llama", tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    features = records()
    trainer = ObjectiveTrainer(model=model, args=args(tmp_path), objective=objective, objective_kwargs=kwargs,
                               eval_dataset=Dataset.from_list(features), data_collator=DataCollatorForChat(0))
    metrics = trainer.evaluate()
    batch = padded(features)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = compute_objective(objective, logits, batch["labels"], **kwargs)  # normalised by its own unit
    assert trainer.unit == ("samples" if objective == "bft" else "tokens")
    assert metrics["eval_loss"] == pytest.approx(float(expected.loss), rel=1e-9)
    for name, value in expected.metrics.items():
        assert metrics[f"eval_{name}"] == pytest.approx(float(value), rel=1e-9), name


def test_dllm_eval_loss_is_normalised_by_all_answer_tokens(tmp_path):
    """The eval batches the collator made (seeded), scored as one: sum of weighted masked CE / all answer tokens."""
    model_dir = init_model("tiny-dllm", tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    collator = DiffusionCollator(mask_token_id=3, eos_token_id=2, eps=0.3, generator=torch.Generator().manual_seed(0))
    made: list[dict[str, torch.Tensor]] = []

    def recording(features):
        made.append(collator(features))
        return dict(made[-1])

    trainer = DiffusionTrainer(model=model, args=args(tmp_path), objective="sft",
                               eval_dataset=Dataset.from_list(records()), data_collator=recording)  # fmt: skip
    metrics = trainer.evaluate()
    assert [len(b["t"]) for b in made] == [2, 2, 1]
    answer_tokens = sum(int(b["answer_mask"].sum()) for b in made)
    with torch.no_grad():
        total = sum(float(diffusion_objective("sft", model(input_ids=b["input_ids"]).logits, b["labels"], b["t"],
                                              num_answer_tokens=answer_tokens, row_weight=b["loss_weight"]).loss)
                    for b in made)  # fmt: skip
    assert metrics["eval_loss"] == pytest.approx(total, rel=1e-9)
