"""PSFT's old policy: a snapshot of the trainable weights (LoRA: the adapters), refreshed every N optimizer steps."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from dftune.runtime.recent_policy import RecentPolicyForward


def test_snapshot_holds_the_adapters_of_the_last_refresh(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    inputs = {"input_ids": torch.tensor([[1, 5, 9, 3, 7]])}
    model.train()
    old = RecentPolicyForward(model, refresh_steps=2)
    assert old.params and all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    old.refresh(0)
    with torch.no_grad():
        at_step_0 = model(**inputs).logits
        for param in old.params:  # an "optimizer step"
            param.add_(0.05)
        moved = model(**inputs).logits
    assert not torch.allclose(moved, at_step_0)
    old.refresh(1)  # not a multiple of 2: the snapshot stays
    torch.testing.assert_close(old.logits(inputs), at_step_0, rtol=0, atol=0)
    torch.testing.assert_close(model(**inputs).logits.detach(), moved, rtol=0, atol=0)  # live weights restored
    assert model.training and all(p.requires_grad for p in old.params)  # back in train mode, still trainable
    old.refresh(2)
    torch.testing.assert_close(old.logits(inputs), moved, rtol=0, atol=0)
