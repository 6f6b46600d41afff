"""precompute_ref_log_probs: iw-SFT's reference run once before training gives the loss, gradients and weights of
the live reference, which then never runs again."""

from __future__ import annotations

import gc
import json
import textwrap
import weakref

import pytest
import torch
from sgd_setup import sgd_args, synthetic_dataset
from test_sft_end_to_end import write_chat_files
from transformers import AutoModelForCausalLM

from dftune.data.collate import DataCollatorForChat, configure_packing
from dftune.errors import DftuneError
from dftune.run import parse_config, run
from dftune.runtime.objective_trainer import ObjectiveTrainer


def float64_model(model_dir, *, noise: float = 0.0):
    """The tiny model in float64; `noise` > 0: its weights moved by seeded noise (a reference unlike the policy)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="sdpa")
    if noise:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(noise * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return model


class ForwardCount:
    """Counts a module's forward calls, each run as it is (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.calls += 1


def iw_trainer(model_dir, tmp_path, name: str, *, packing: bool, fused: str, precompute: bool):
    policy = float64_model(model_dir)
    reference = float64_model(model_dir, noise=0.05)
    calls = ForwardCount(reference)
    if packing:
        configure_packing(policy.config)
        configure_packing(reference.config)
    alive = weakref.ref(reference)
    trainer = ObjectiveTrainer(
        model=policy, args=sgd_args(str(tmp_path / name), batch=8, accumulation=1, steps=2),
        train_dataset=synthetic_dataset(), data_collator=DataCollatorForChat(pad_token_id=0, packing=packing),
        objective="iw_sft", objective_kwargs={"max_weight": 1e6}, fused_loss=fused, reference=reference,
        precompute_ref_log_probs=precompute,
    )  # fmt: skip
    del reference
    return trainer, calls, alive


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("fused", ["true", "false"])
def test_precomputed_column_gives_the_live_loss_and_gradients(tiny_model_dir, tmp_path, packing, fused):
    """Step 1's loss and gradients with `ref_logps` equal those with the reference run on the batch (float64)."""
    results = {}
    for precompute in (False, True):
        trainer, calls, alive = iw_trainer(tiny_model_dir, tmp_path, f"run-{precompute}", packing=packing,
                                           fused=fused, precompute=precompute)  # fmt: skip
        if precompute:
            assert calls.calls == 2  # 16 records in batches of per_device_eval_batch_size 8, before any step
            assert "ref_logps" in trainer.train_dataset.column_names and trainer.reference is None
            gc.collect()
            assert alive() is None  # the frozen copy is freed
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
        if precompute:  # the column lies on the labels: NaN exactly where they are -100
            assert torch.equal(batch["ref_logps"].isnan(), batch["labels"] == -100)
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=trainer.batch_count(batch))
        loss.backward()
        weight = trainer._train_window.pop_means(trainer.accelerator)["iw_sft_weight"]
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
        results[precompute] = loss.detach(), grads, weight, calls.calls
    (live_loss, live_grads, live_weight, live_calls), (loss, grads, weight, _) = results[False], results[True]
    assert live_calls == 1 and abs(live_weight - 1.0) > 1e-3  # the reference ran on the batch and differs
    torch.testing.assert_close(loss, live_loss, rtol=1e-10, atol=0)
    assert weight == pytest.approx(live_weight, rel=1e-10)
    for name, grad in live_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-14, msg=name)


def test_the_reference_never_runs_in_training(tiny_model_dir, tmp_path):
    trainer, calls, _ = iw_trainer(tiny_model_dir, tmp_path, "spy", packing=True, fused="auto", precompute=True)
    before = calls.calls
    trainer.train()
    assert before == 2 and calls.calls == before
    live, live_calls, _ = iw_trainer(tiny_model_dir, tmp_path, "live", packing=True, fused="auto", precompute=False)
    live.train()
    assert live_calls.calls == 2  # once per step: the spy sees the reference when it does run


def test_an_objective_that_cannot_use_it_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(DftuneError, match=r"asft needs the reference's whole distribution"):
        ObjectiveTrainer(model=float64_model(tiny_model_dir), args=sgd_args(str(tmp_path), batch=2, accumulation=1,
                         steps=1), train_dataset=synthetic_dataset(), data_collator=DataCollatorForChat(0),
                         objective="asft", objective_kwargs={}, reference=float64_model(tiny_model_dir),
                         precompute_ref_log_probs=True)  # fmt: skip
    for loss, why in [("asft", "its KL term"), ("psft", "refreshed from the policy"), ("sft", "uses no reference")]:
        with pytest.raises(DftuneError, match=rf"precompute_ref_log_probs applies to stage: dpo and to loss: iw_sft.*"
                           rf"loss: {loss}: .*{why}"):
            parse_config(["--loss", loss, "--precompute_ref_log_probs", "true"])


def sgd_yaml(tmp_path, model_dir, name: str, method: str) -> str:
    """Full fine-tuning from YAML with plain SGD (no clipping, constant rate): the weights show any gradient error."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        model_name_or_path: {model_dir}
        torch_dtype: auto
        attn_implementation: sdpa
        stage: sft
        finetuning_type: full
        loss: iw_sft
        {method}
        data_files: {json.dumps(write_chat_files(tmp_path, n_files=1))}
        packing: true
        output_dir: {tmp_path / name}
        per_device_train_batch_size: 4
        optim: sgd
        learning_rate: 0.5
        lr_scheduler_type: constant
        max_grad_norm: 0.0
        max_steps: 2
        logging_steps: 1
        save_strategy: "no"
        report_to: none
        use_cpu: true
    """), encoding="utf-8")  # fmt: skip
    return str(path)


@pytest.mark.slow
def test_two_steps_from_yaml_give_the_same_weights(tiny_model_dir, tmp_path):
    """A float64 checkpoint (torch_dtype: auto), 2 SGD steps: the same weights with and without the key."""
    model_dir = tmp_path / "float64-model"
    float64_model(tiny_model_dir).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_model_dir / name).is_file():
            (model_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    live = run(parse_config([sgd_yaml(tmp_path, model_dir, "live", "")]))
    pre = run(parse_config([sgd_yaml(tmp_path, model_dir, "pre", "precompute_ref_log_probs: true")]))
    assert pre.reference is None and live.reference is not None
    logs = [e for e in live.state.log_history if "iw_sft_weight" in e]
    assert len(logs) == 2 and abs(logs[1]["iw_sft_weight"] - 1.0) > 1e-6  # step 2's policy has left the reference
    weights = dict(pre.model.named_parameters())
    assert next(iter(weights.values())).dtype == torch.float64
    for name, value in live.model.named_parameters():
        torch.testing.assert_close(weights[name], value, rtol=1e-10, atol=1e-13, msg=name)
