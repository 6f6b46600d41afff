"""`dftune probe`: its JSON's shares equal a straightforward computation from the model's full logits."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main


def write_chats(path: Path, replies: list[str]) -> Path:
    lines = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": reply}]}
             for i, reply in enumerate(replies)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def reference_probs(model_dir: Path, data: Path) -> tuple[torch.Tensor, list[int]]:
    """p(target) of every trained token, from the full [T, V] logits in float64: the naive probe."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).double().eval()
    probs, tokens = [], []
    for line in data.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        end = len(ids) - 1 if tokenizer.decode(ids[-1:]).strip() == "" else len(ids)  # a trailing newline: untrained
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        for position in range(start, end):
            probs.append(float(p[position - 1, ids[position]]))
            tokens.append(ids[position])
    return torch.tensor(probs, dtype=torch.float64), tokens


def test_probe_shares_equal_the_full_logits_computation(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_chats(tmp_path / "train.jsonl", ["the answer is 42", "a b c", "× ÷ +", "no idea at all, sorry"])
    out = tmp_path / "probe"
    assert main(["probe", str(tiny_model_dir), str(data), "--output_dir", str(out), "--min_count", "1"]) == 0
    summary = json.loads((out / "probe.json").read_text(encoding="utf-8"))
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    probs, tokens = reference_probs(tiny_model_dir, data)
    overall = summary["overall"]
    assert overall["targets"] == len(probs)
    for threshold in (0.01, 0.1):
        assert overall[f"p<{threshold:g}"] == float((probs < threshold).double().mean())
    assert abs(summary["mean_p"] - float(probs.mean())) < 1e-5
    assert [row["targets"] for row in summary["per_source"].values()] == [len(probs)]
    assert sum(row["targets"] for row in summary["per_kind"].values()) == len(probs)
    edges = summary["histogram_log10_p"]["edges"]
    log_p = torch.log10(probs)
    counts = [int(((log_p >= lo) & ((log_p < hi) if hi < 0 else (log_p <= hi))).sum()) for lo, hi in zip(edges, edges[1:])]
    assert summary["histogram_log10_p"]["counts"] == counts
    rarest = summary["rarest_frequent_tokens"][0]
    lowest = min(set(tokens), key=lambda t: float(probs[[tok == t for tok in tokens]].median()))
    assert rarest["token"] == lowest


def test_probe_of_a_diffusion_model_equals_the_masked_full_logits(tmp_path: Path) -> None:
    """Stage dllm with every answer token masked (mask_ratio 1): p(target) at each masked position, unshifted, from
    the bidirectional model's full logits in float64."""
    from dftune.config.model_args import ModelArguments
    from dftune.data.encode import IGNORE_INDEX, encode_messages
    from dftune.models.loading import load_diffusion_model, resolve_mask_token_id
    from dftune.models.presets import init_model

    model_dir = init_model("tiny-dllm", tmp_path / "dllm")
    data = write_chats(tmp_path / "train.jsonl", ["the answer is 42", "a b c", "× ÷ +"])
    out = tmp_path / "probe"
    assert main(["probe", str(model_dir), str(data), "--stage", "dllm", "--mask_ratio", "1.0", "--output_dir",
                 str(out), "--min_count", "1"]) == 0  # fmt: skip
    summary = json.loads((out / "probe.json").read_text(encoding="utf-8"))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_diffusion_model(ModelArguments(model_name_or_path=str(model_dir))).double().eval()
    mask = resolve_mask_token_id(None, model.config, tokenizer)
    probs = []
    for line in data.read_text(encoding="utf-8").splitlines():
        encoded = encode_messages(tokenizer, json.loads(line)["messages"])
        labels = torch.tensor(encoded["labels"])
        ids = torch.tensor(encoded["input_ids"]).masked_fill(labels != IGNORE_INDEX, mask)
        with torch.no_grad():
            p = torch.softmax(model(ids[None]).logits[0].double(), dim=-1)
        probs += [float(p[i, labels[i]]) for i in (labels != IGNORE_INDEX).nonzero().flatten()]
    probs_t = torch.tensor(probs, dtype=torch.float64)
    assert summary["stage"] == "dllm" and summary["overall"]["targets"] == len(probs)
    assert abs(summary["mean_p"] - float(probs_t.mean())) < 1e-5
    for threshold in (0.01, 0.1):
        assert summary["overall"][f"p<{threshold:g}"] == float((probs_t < threshold).double().mean())
