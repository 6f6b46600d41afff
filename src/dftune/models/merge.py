"""Fold a LoRA adapter into its base model: a plain Hugging Face model that loads without peft."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.errors import DftuneError


def merge_lora(base: str | Path, adapter: str | Path, output_dir: str | Path) -> Path:
    """Load `base`, apply the adapter in `adapter`, merge its weights in, save model and tokenizer to `output_dir`.

    The tokenizer comes from the adapter folder when it has one (dftune saves it there), else from the base.
    """
    adapter, output_dir = Path(adapter), Path(output_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise DftuneError(f"{adapter} holds no LoRA adapter (no adapter_config.json): give the training output_dir")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")  # merge in the checkpoint's dtype
    except OSError as err:
        raise DftuneError(f"cannot load the base model {base!r}: {err}") from None
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(output_dir)
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    AutoTokenizer.from_pretrained(adapter if has_tokenizer else base).save_pretrained(output_dir)
    return output_dir
