"""Every registered objective through the real trainers: batch 8 x accumulation 1 == batch 2 x accumulation 4.

Stage sft: `ObjectiveTrainer` on the tiny float64 Llama with plain SGD (the final weights expose any error in the
gradient's scale), the fused head on as `fused_loss: auto` chooses. Stage dllm: `DiffusionTrainer` on one noised
batch against its micro-batches (random masks cannot be replayed across batch sizes through the Trainer). An
objective with a KL anchor or an importance ratio to the start gets a frozen reference model (PSFT's old policy is
the trainer's own snapshot). Then what happens when the fused head cannot compute
what an objective needs: one log line and the unfused path under `auto`, an error under `true`.
"""

from __future__ import annotations

import logging

import pytest
import torch
from objective_cases import cases
from sgd_setup import sgd_args, synthetic_dataset
from transformers import AutoModelForCausalLM

from dftune.data.collate import DataCollatorForChat
from dftune.errors import DftuneError
from dftune.losses import CE, ENTROPY, OBJECTIVES, Objective, RowStatistic, Weights, register
from dftune.losses.statistics import entropy_of_logits
from dftune.runtime.objective_trainer import ObjectiveTrainer



def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="sdpa")


def make_trainer(model_dir, tmp_path, name, settings, *, batch=4, accumulation=2, fused_loss="auto", steps=2):
    model = load(model_dir)
    spec = OBJECTIVES[name]
    reference = load(model_dir) if spec.needs_reference and spec.reference == "start" else None
    args = sgd_args(str(tmp_path / f"{name}-{batch}x{accumulation}-{fused_loss}"), batch=batch,
                              accumulation=accumulation, steps=steps)  # fmt: skip
    return ObjectiveTrainer(
        model=model, args=args, train_dataset=synthetic_dataset(),
        data_collator=DataCollatorForChat(pad_token_id=0), objective=name, objective_kwargs=settings,
        fused_loss=fused_loss, reference=reference,
    )  # fmt: skip


@pytest.mark.parametrize("name, settings", cases("sft"))
def test_stage_sft_accumulation_is_exact(tiny_model_dir, tmp_path, name, settings):
    before = dict(load(tiny_model_dir).named_parameters())
    runs = {}
    for batch, accumulation in ((8, 1), (2, 4)):
        trainer = make_trainer(tiny_model_dir, tmp_path, name, settings, batch=batch, accumulation=accumulation)
        assert trainer.fused_head is not None  # the tiny Llama's head is fusable: the fused path is what is tested
        trainer.train()
        runs[batch] = dict(trainer.model.named_parameters())
    moved = max((runs[8][n] - before[n]).abs().max().item() for n in before)
    assert moved > 1e-5, "the run must change the weights for the comparison to mean anything"
    for param in runs[8]:
        torch.testing.assert_close(runs[2][param], runs[8][param], rtol=1e-9, atol=1e-10, msg=param)


@pytest.mark.parametrize("name, settings", cases("dllm"))
def test_stage_dllm_accumulation_is_exact(tmp_path, name, settings):
    from test_dllm_trainer import assert_accumulation_is_exact, make_trainer as dllm_trainer, noised_batch

    from dftune.models.presets import init_model

    model_dir = init_model("tiny-dllm", tmp_path / "tiny-dllm")
    trainer = dllm_trainer(model_dir, tmp_path, name)
    trainer.objective_kwargs = settings  # the registry's settings, not the helper's
    assert_accumulation_is_exact(trainer, noised_batch(model_dir))


def unchunked() -> Objective:
    """An objective on a statistic of its own that the fused head cannot compute chunk by chunk."""
    return Objective(
        name="test-unchunked", normalise_by="tokens", needs=frozenset({CE, "whole-row-only"}),
        statistics={"whole-row-only": RowStatistic(entropy_of_logits, chunked=False)},
        weigh=lambda stats, count: Weights(stats.rows["whole-row-only"] / count),
    )


def test_a_statistic_the_head_cannot_chunk_runs_unfused_with_one_log_line(tiny_model_dir, tmp_path, caplog,
                                                                          scratch_objectives):  # fmt: skip
    register(unchunked())
    with pytest.raises(DftuneError, match=r"fused_loss: true cannot apply: objective test-unchunked needs "
                                          r"\['whole-row-only'\]"):  # fmt: skip
        make_trainer(tiny_model_dir, tmp_path, "test-unchunked", {}, fused_loss="true")
    with caplog.at_level(logging.INFO, logger="dftune.runtime.objective_trainer"):
        trainer = make_trainer(tiny_model_dir, tmp_path, "test-unchunked", {}, fused_loss="auto")
    reasons = [r.getMessage() for r in caplog.records if "fused_loss" in r.getMessage()]
    assert len(reasons) == 1 and "'whole-row-only'" in reasons[0], reasons
    assert trainer.fused_head is None
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


def test_a_row_statistic_the_head_can_chunk_is_fused(tiny_model_dir, tmp_path, scratch_objectives):
    register(Objective(name="test-entropy", normalise_by="tokens", needs=frozenset({CE, ENTROPY}),
                       weigh=lambda stats, count: Weights(stats.rows[ENTROPY] / count)))  # fmt: skip
    assert make_trainer(tiny_model_dir, tmp_path, "test-entropy", {}, fused_loss="true").fused_head is not None


@pytest.mark.parametrize("name, settings", cases("dllm"))
def test_stage_dllm_fused_head_equals_unfused(tmp_path, name, settings):
    """`fused_loss: true` in stage dllm: the same loss and parameter gradients as the materialised logits."""
    from test_dllm_trainer import grads, noised_batch
    from transformers import TrainingArguments

    from dftune.models.presets import init_model
    from dftune.stages.dllm import DiffusionTrainer

    model_dir = init_model("tiny-dllm", tmp_path / "tiny-dllm")
    batch = noised_batch(model_dir)
    results = {}
    for fused_loss in ("true", "false"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
        args = TrainingArguments(output_dir=str(tmp_path / fused_loss), use_cpu=True, report_to="none")
        trainer = DiffusionTrainer(model=model, args=args, objective=name, objective_kwargs=settings,
                                   fused_loss=fused_loss)  # fmt: skip
        assert (trainer.fused_head is not None) == (fused_loss == "true")
        loss = trainer.compute_loss(model.train(), dict(batch), num_items_in_batch=batch["answer_mask"].sum())
        loss.backward()
        results[fused_loss] = (loss.detach(), grads(model))
    torch.testing.assert_close(results["true"][0], results["false"][0], rtol=1e-10, atol=0)
    torch.testing.assert_close(results["true"][1], results["false"][1], rtol=1e-8, atol=1e-12)
