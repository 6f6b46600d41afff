"""`dftune init-model`: a saved preset reloads through the Auto classes with identical token ids."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main
from dftune.models.presets import PRESETS, build_tokenizer

TEXTS = [
    "<|im_start|>user\nWhat is 12 + 34?<|im_end|>\n<|im_start|>assistant\n46<|im_end|>\n",
    "  leading spaces, tabs\tand CRLF\r\n",
    "unicode: héllo wörld 你好 🙂 ∑",
    "<|endoftext|>",
]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_reloads_with_identical_ids(preset, tmp_path, capsys):
    assert main(["init-model", "--preset", preset, "--output_dir", str(tmp_path)]) == 0
    assert preset in capsys.readouterr().out
    reloaded, reference = AutoTokenizer.from_pretrained(tmp_path), build_tokenizer()
    for text in TEXTS:
        ids = reloaded(text, add_special_tokens=False)["input_ids"]
        assert ids == reference(text, add_special_tokens=False)["input_ids"]
        assert reloaded.decode(ids) == text
    assert reloaded.convert_tokens_to_ids("<|im_end|>") == reloaded.eos_token_id
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert reloaded.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.vocab_size == len(reloaded)
    with torch.no_grad():
        logits = model(torch.tensor([reloaded(TEXTS[0])["input_ids"]])).logits
    assert torch.isfinite(logits).all()


def test_unknown_preset_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["init-model", "--preset", "huge", "--output_dir", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err


def test_torch_dtype_applies_to_a_random_preset(tmp_path):
    """`--torch_dtype bfloat16` writes bfloat16 weights and says so in the config (it used to save float32), the
    float32 model rounded: one seed, one model, whatever the dtype."""
    assert main(["init-model", "--preset", "tiny-llama", "--output_dir", str(tmp_path / "32")]) == 0
    assert main(["init-model", "--preset", "tiny-llama", "--torch_dtype", "bfloat16",
                 "--output_dir", str(tmp_path / "16")]) == 0  # fmt: skip
    full, half = (AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype="auto") for name in ("32", "16"))
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(full.state_dict().items(), half.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name
