"""Through the real Trainer: `fused_loss: true` trains exactly like `false` (float64 tiny model, SGD, a few steps).

The fused head only changes how the loss and its gradient are computed (hidden states and the head's weight,
one chunk of logits at a time), so every logged metric and every final weight must agree to rounding.
"""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from sgd_setup import sgd_args, synthetic_dataset
from transformers import AutoModelForCausalLM

from dftune.data.collate import DataCollatorForChat
from dftune.errors import DftuneError
from dftune.runtime.objective_trainer import ObjectiveTrainer

OBJECTIVES = {"dft": {"alpha": 0.7}, "bft": {"group_size": 3, "gamma": 1.0}}


def make_trainer(model, tmp_path, objective: str, fused_loss: str, packing: bool = False) -> ObjectiveTrainer:
    args = sgd_args(str(tmp_path / f"{objective}-{fused_loss}-{packing}"), batch=4, accumulation=2, steps=3)
    return ObjectiveTrainer(
        model=model,
        args=args,
        train_dataset=synthetic_dataset(),
        eval_dataset=synthetic_dataset(8, seed=1),
        data_collator=DataCollatorForChat(pad_token_id=0, packing=packing),
        objective=objective,
        objective_kwargs=OBJECTIVES[objective],
        fused_loss=fused_loss,
    )


def train(model_dir, tmp_path, objective: str, fused_loss: str, packing: bool = False):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="sdpa")
    trainer = make_trainer(model, tmp_path, objective, fused_loss, packing)
    assert (trainer.fused_head is not None) == (fused_loss == "true")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    return dict(model.named_parameters()), logs, trainer.evaluate()


@pytest.mark.parametrize(("objective", "packing"), [("dft", False), ("bft", False), ("bft", True)])
def test_fused_training_matches_unfused(tiny_model_dir, tmp_path, objective, packing):
    fused, fused_logs, fused_eval = train(tiny_model_dir, tmp_path, objective, "true", packing)
    plain, plain_logs, plain_eval = train(tiny_model_dir, tmp_path, objective, "false", packing)
    assert len(fused_logs) == len(plain_logs) == 3
    for f, p in zip(fused_logs, plain_logs):
        for key in p:
            if key not in ("grad_norm", "learning_rate", "epoch"):
                assert f[key] == pytest.approx(p[key], rel=1e-9, abs=1e-12), key
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-9, atol=1e-11, msg=name)
    for key in ("eval_loss", "eval_ce", "eval_avg_p_correct"):
        assert fused_eval[key] == pytest.approx(plain_eval[key], rel=1e-9), key


def lora_model(model_dir, targets):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="sdpa")
    torch.manual_seed(0)  # the same lora_A in every run
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))


def test_lora_on_the_decoder_is_fused_and_exact(tiny_model_dir, tmp_path):
    """LoRA on the attention layers, head untouched: fused, and the adapters train as without fusion."""
    runs = {}
    for fused_loss in ("true", "false"):
        model = lora_model(tiny_model_dir, ["q_proj", "v_proj"])
        for name, param in model.named_parameters():  # peft zero-initialises B: start from non-zero adapters
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(0))
        trainer = make_trainer(model, tmp_path, "dft", fused_loss)
        trainer.train()
        runs[fused_loss] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    for name in runs["false"]:
        torch.testing.assert_close(runs["true"][name], runs["false"][name], rtol=1e-9, atol=1e-11, msg=name)


def test_lora_adapted_head_falls_back_with_one_log_line(tiny_model_dir, tmp_path, caplog):
    model = lora_model(tiny_model_dir, ["q_proj", "lm_head"])
    with caplog.at_level(logging.INFO, logger="dftune.runtime.objective_trainer"):
        trainer = make_trainer(model, tmp_path, "bft", "auto")
    reasons = [r.getMessage() for r in caplog.records if "fused_loss" in r.getMessage()]
    assert len(reasons) == 1 and "LoRA-adapted" in reasons[0], reasons
    assert trainer.fused_head is None
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)

    with pytest.raises(DftuneError, match="fused_loss: true cannot apply: the output layer is LoRA-adapted"):
        make_trainer(lora_model(tiny_model_dir, ["lm_head"]), tmp_path, "bft", "true")


def test_logit_softcapping_falls_back(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(DftuneError, match="final_logit_softcapping"):
        make_trainer(model, tmp_path, "dft", "true")
