"""Soft-capped and scaled-logit architectures train through the fused head: its loss and the gradients of every
parameter equal the model's own forward (its logits, then the objective), float64, tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from dftune.losses import compute_objective, fused_linear_loss
from dftune.runtime.fused_head import LOGIT_TRANSFORMS, fusable_head

TINY = dict(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, max_position_embeddings=64)  # fmt: skip
# Values away from 1 (and a soft-cap small enough to bend the logits), so a missed transform shows.
ARCHITECTURES = {
    "gemma2": {"final_logit_softcapping": 2.0},
    "gemma3_text": {"final_logit_softcapping": 2.0},
    "cohere": {"logit_scale": 0.3},
    "cohere2": {"logit_scale": 0.3},
    "granite": {"logits_scaling": 4.0},
    "granitemoe": {"logits_scaling": 4.0, "num_local_experts": 2, "num_experts_per_tok": 1},
    "falcon_h1": {"lm_head_multiplier": 0.4, "mamba_d_ssm": 16, "mamba_n_heads": 2, "mamba_d_head": 8,
                  "mamba_d_state": 4, "mamba_n_groups": 1, "mamba_chunk_size": 4},
}


FLOAT32_ONLY = {"granitemoe"}  # its experts' grouped matmul has no float64 kernel: float32, looser tolerances


def test_every_known_transform_is_tested():
    assert set(ARCHITECTURES) == set(LOGIT_TRANSFORMS)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
@pytest.mark.parametrize("objective", ["sft", "dft"])
def test_fused_equals_the_models_own_logits(model_type, objective):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **ARCHITECTURES[model_type])
    dtype = torch.float32 if model_type in FLOAT32_ONLY else torch.float64
    rtol, atol = (1e-5, 1e-7) if dtype == torch.float32 else (1e-8, 1e-11)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager").eval()
    input_ids = torch.randint(0, 61, (2, 9))
    labels = input_ids.clone()
    labels[:, :3] = -100

    expected = compute_objective(objective, model(input_ids=input_ids).logits, labels)
    params = [p for p in model.parameters() if p.requires_grad]
    expected_grads = torch.autograd.grad(expected.loss, params, allow_unused=True)

    fused, reason = fusable_head(model)
    assert fused is not None, reason
    assert fused.transform != type(fused.transform)()  # not the identity: the transform is really applied

    def loss_fn(hidden):
        return fused_linear_loss(hidden, fused.head.weight, labels, objective=objective, chunk_size=5,
                                 logit_transform=fused.transform)  # fmt: skip

    with fused.computes(loss_fn) as results:
        loss = model(input_ids=input_ids).logits  # the head returned the fused loss, untransformed
    assert model(input_ids=input_ids).logits.shape[-1] == 61  # and the model is itself again after
    torch.testing.assert_close(loss, expected.loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(torch.as_tensor(results[-1].metrics["ce"]), torch.as_tensor(expected.metrics["ce"]),
                               rtol=rtol, atol=atol)  # fmt: skip
    for param, got, want in zip(params, torch.autograd.grad(loss, params, allow_unused=True), expected_grads):
        if want is None:
            assert got is None or not got.abs().max() > 0
            continue
        torch.testing.assert_close(got, want, rtol=rtol * 10, atol=atol)
