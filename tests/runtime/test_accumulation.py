"""Through the real Trainer: batch 8 x accumulation 1 == batch 2 x accumulation 4, for every objective.

The known trap: transformers does not divide by the accumulation steps when a loss is normalised by
`num_items_in_batch`, so a loss normalised per micro-batch comes out `gradient_accumulation_steps` times too
large (the BFT reference code has this bug). With plain SGD that shows up directly in the final weights.
"""

from __future__ import annotations

import pytest
import torch
from sgd_setup import sgd_args, synthetic_dataset
from transformers import AutoModelForCausalLM
from transformers.integrations.integration_utils import rewrite_logs

from dftune.data.collate import DataCollatorForChat
from dftune.runtime.objective_trainer import ObjectiveTrainer

OBJECTIVES = {"sft": {}, "dft": {"alpha": 0.7}, "bft": {"group_size": 3, "gamma": 1.0}}


def train(model_dir, tmp_path, objective: str, batch: int, accumulation: int, packing: bool = False):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="sdpa")
    args = sgd_args(
        str(tmp_path / f"{objective}-{batch}x{accumulation}-{packing}"), batch=batch, accumulation=accumulation, steps=2
    )
    trainer = ObjectiveTrainer(
        model=model,
        args=args,
        train_dataset=synthetic_dataset(),
        data_collator=DataCollatorForChat(pad_token_id=0, packing=packing),
        objective=objective,
        objective_kwargs=OBJECTIVES[objective],
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    return dict(model.named_parameters()), logs


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_accumulation_gives_same_weights_and_metrics(tiny_model_dir, tmp_path, objective):
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).named_parameters())
    big, big_logs = train(tiny_model_dir, tmp_path, objective, batch=8, accumulation=1)
    small, small_logs = train(tiny_model_dir, tmp_path, objective, batch=2, accumulation=4)
    moved = max((big[n] - before[n]).abs().max().item() for n in big)
    assert moved > 1e-5, "the run must actually change the weights for the comparison to mean anything"
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-9, atol=1e-10, msg=name)
    # Metrics are averaged over the whole accumulated batch, not taken from the last micro-batch.
    assert len(big_logs) == len(small_logs) == 2
    for b, s in zip(big_logs, small_logs):
        for key in ("loss", "ce", "avg_p_correct", "token_accuracy"):
            assert s[key] == pytest.approx(b[key], rel=1e-6), key
        # Trackers add the "train/" prefix themselves: we must log bare names, never "train/train/...".
        assert set(rewrite_logs(s)) >= {"train/avg_p_correct", "train/ce", "train/token_accuracy"}
        assert not any(key.startswith("train") for key in s)


def test_packed_training_matches_padded(tiny_model_dir, tmp_path):
    """Padding-free packing changes the batch layout, not the objective: same weights after training."""
    padded, padded_logs = train(tiny_model_dir, tmp_path, "bft", batch=4, accumulation=2)
    packed, packed_logs = train(tiny_model_dir, tmp_path, "bft", batch=4, accumulation=2, packing=True)
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], rtol=1e-7, atol=1e-9, msg=name)
    assert packed_logs[-1]["bft_sample_weight"] == pytest.approx(padded_logs[-1]["bft_sample_weight"], rel=1e-7)
