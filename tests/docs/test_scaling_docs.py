"""docs/scaling.md's memory table is docs/memory_estimates.py's output, and that script counts parameters as the
real transformers and peft modules do; the accelerate config it prints is the shipped one."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

DOCS = Path(__file__).parents[2] / "docs"
MULTI_NODE = DOCS.parent / "configs" / "accelerate" / "multi_node.yaml"


def test_the_printed_multi_node_config_is_the_shipped_one():
    blocks = re.findall(r"^```yaml\n(.*?)^```", (DOCS / "scaling.md").read_text(encoding="utf-8"), re.M | re.S)
    printed = [yaml.safe_load(block) for block in blocks if "num_machines: 2" in block]
    assert printed == [yaml.safe_load(MULTI_NODE.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def estimates():
    spec = importlib.util.spec_from_file_location("memory_estimates", DOCS / "memory_estimates.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_page_shows_the_scripts_table(estimates):
    page = (DOCS / "scaling.md").read_text(encoding="utf-8")
    shown = page.split("<!-- memory-table -->\n", 1)[1].split("<!-- /memory-table -->", 1)[0]
    assert shown == estimates.table()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_parameter_counts_match_the_modules(estimates, family):
    """A scaled-down Qwen2 (q/k/v biases) and Llama: total, largest layer and LoRA r16 counts as built."""
    dims = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 3,
            "num_attention_heads": 8, "num_key_value_heads": 2, "tie_word_embeddings": False}  # fmt: skip
    config = Qwen2Config(**dims) if family == "qwen2" else LlamaConfig(**dims)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    architecture = estimates.Architecture(family, 1000, 64, 176, 3, 8, 2, qkv_bias=family == "qwen2")
    assert architecture.total_params == sum(p.numel() for p in model.parameters())
    assert architecture.largest_layer_params == max(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=estimates.LORA_RANK, target_modules="all-linear"))
    assert architecture.lora_params == lora.get_nb_trainable_parameters()[0]
