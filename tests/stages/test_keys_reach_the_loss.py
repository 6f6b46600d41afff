"""A stage key is done when it reaches the math: parse -> `build_trainer` -> one `compute_loss` against the formula.

`noise_schedule: cosine` tested only inside the collator could be dropped by `build_trainer`, or the trainer could
ignore the collator's ELBO weight, and a cosine config would train linear with every collator test green.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dftune.models.presets import init_model
from dftune.run import build_trainer, parse_config

from test_dllm_end_to_end import write_records

EPS = 0.2


@pytest.fixture(scope="module")
def dllm_dir(tmp_path_factory):
    return init_model("tiny-dllm", tmp_path_factory.mktemp("tiny-dllm"))


@pytest.mark.parametrize("fused_loss", ["true", "false"])
def test_cosine_noise_schedule_reaches_the_loss(dllm_dir, tmp_path, fused_loss):
    """With s = (1 - eps) u + eps drawn from the same seed, the batch's mask ratio is 1 - cos(pi s / 2) and the loss
    is sum_b w_b * sum_(masked i of b) CE_i / answer tokens with w_b = (pi / 2) sin(pi s_b / 2) / t_b (MDLM's
    cosine ELBO weight), not linear's 1 / t."""
    data = write_records(tmp_path / "train.json", 6, length=5)
    config = parse_config(["--model_name_or_path", str(dllm_dir), "--stage", "dllm", "--data_files", data,
                           "--noise_schedule", "cosine", "--diffusion_eps", str(EPS), "--fused_loss", fused_loss,
                           "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none",
                           "--max_length", "64"])  # fmt: skip
    trainer = build_trainer(config)
    features = [trainer.train_dataset[i] for i in range(4)]
    torch.manual_seed(7)
    batch = trainer.data_collator(features)
    torch.manual_seed(7)
    s = (1 - EPS) * torch.rand(4).double() + EPS  # the collator's first draw: one diffusion time per sample
    ratio = 1 - torch.cos(math.pi * s / 2)
    weight = (math.pi / 2) * torch.sin(math.pi * s / 2) / ratio
    torch.testing.assert_close(batch["t"], ratio.float())

    model = trainer.model.train()
    count = batch["answer_mask"].sum()
    ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=count)
    logits = model(input_ids=batch["input_ids"]).logits.double()  # [B, L, V], position i predicts token i
    ce = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none").view(logits.shape[:2])
    masked = batch["labels"] != -100
    expected = (weight[:, None] * ce * masked).sum() / count
    assert masked.any() and not torch.allclose(weight, 1 / ratio)  # the two schedules' weights differ here
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=0)  # float32 model
