"""Fold a LoRA adapter into its base model: a plain Hugging Face model that loads without peft."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from dftune.config.model_args import ModelArguments
from dftune.errors import DftuneError
from dftune.models.loading import load_adapter, load_model


def merge_lora(base: str | Path, adapter: str | Path, output_dir: str | Path) -> Path:
    """Load `base`, apply the adapter in `adapter`, merge its weights in, save model and tokenizer to `output_dir`.

    The tokenizer comes from the adapter folder when it has one (dftune saves it there), else from the base.
    """
    adapter, output_dir = Path(adapter), Path(output_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise DftuneError(f"{adapter} holds no LoRA adapter (no adapter_config.json): give the training output_dir")
    base_args = ModelArguments(model_name_or_path=str(base), torch_dtype="auto")  # merge in the checkpoint's dtype
    model = load_model(base_args, what="the base model")
    merged = load_adapter(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(output_dir)
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    AutoTokenizer.from_pretrained(adapter if has_tokenizer else base).save_pretrained(output_dir)
    return output_dir
