"""Shared set-up of the exactness tests: variable-length synthetic rows and plain-SGD TrainingArguments."""

from __future__ import annotations

import random

from datasets import Dataset
from transformers import TrainingArguments


def synthetic_dataset(n: int = 16, seed: int = 0) -> Dataset:
    """Variable-length rows with 1-2 labelled spans each, so token counts differ between micro-batches."""
    rng = random.Random(seed)
    rows: dict[str, list] = {"input_ids": [], "labels": []}
    for _ in range(n):
        length = rng.randint(6, 20)
        ids = [rng.randrange(256) for _ in range(length)]
        labels = [-100] * length
        for _ in range(rng.randint(1, 2)):
            start = rng.randint(1, length - 2)
            for t in range(start, min(length, start + rng.randint(1, 6))):
                labels[t] = ids[t]
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def sgd_args(output_dir: str, *, batch: int, accumulation: int, steps: int) -> TrainingArguments:
    """Plain SGD, constant rate, no clipping: the final weights expose any error in the gradient's scale."""
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
