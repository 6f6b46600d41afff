"""A LoRA adapter of a block-diffusion run decodes its blocks: peft saves no model config, so `load_adapter` reads
the block size from the run's dftune_config.yaml beside the adapter."""

from __future__ import annotations

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from dftune.config.parse import CONFIG_FILE_NAME
from dftune.errors import DftuneError
from dftune.models.loading import load_adapter


@pytest.fixture()
def adapter_dir(tiny_model_dir, tmp_path):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


@pytest.mark.parametrize("saved, expected", [("diffusion_block_size: 4\nloss: sft\n", 4),
                                             ("diffusion_block_size: null\n", None), (None, None)])
def test_the_adapter_brings_its_block_size(tiny_model_dir, adapter_dir, saved, expected):
    if saved is not None:
        (adapter_dir / CONFIG_FILE_NAME).write_text(saved, encoding="utf-8")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert "diffusion_block_size" not in base.config.to_dict()
    loaded = load_adapter(base, str(adapter_dir))
    assert loaded.config.to_dict().get("diffusion_block_size") == expected


def test_an_unreadable_run_config_names_the_file(tiny_model_dir, adapter_dir):
    (adapter_dir / CONFIG_FILE_NAME).write_text("loss: [unclosed\n", encoding="utf-8")
    with pytest.raises(DftuneError, match=f"cannot read .*{CONFIG_FILE_NAME}"):
        load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter_dir))
