"""The untrained model's probability of the operator token where the worked answers write `×` (teacher-forced):
why DFT, which scales each token's gradient by that probability, barely learns it (docs/smollm2_math.md).

    python examples/smollm2_math/token_probability.py --model outputs/smollm2 \
        --data outputs/smollm2_math/data/train.jsonl --records 50
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@torch.no_grad()
def operator_probabilities(model, tokenizer, records: list[dict]) -> dict[str, list[float]]:
    """p(" ×") and p(" +") at the first " ×" of each answer that multiplies, given everything before it."""
    ids = {op: tokenizer(f" {op}", add_special_tokens=False)["input_ids"][0] for op in ("×", "+")}
    found: dict[str, list[float]] = {op: [] for op in ids}
    for record in records:
        question, answer = record["messages"][0], record["messages"][1]["content"]
        if " ×" not in answer:
            continue
        prompt = tokenizer.apply_chat_template([question], tokenize=False, add_generation_prompt=True)
        prefix = tokenizer(prompt + answer.split(" ×")[0], return_tensors="pt", add_special_tokens=False)
        probabilities = model(**prefix).logits[0, -1].softmax(-1)
        for op, token in ids.items():
            found[op].append(probabilities[token].item())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="outputs/smollm2")
    parser.add_argument("--data", default="outputs/smollm2_math/data/train.jsonl")
    parser.add_argument("--records", type=int, default=50, help="read the first N records")
    args = parser.parse_args()
    with open(args.data, encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(args.records), f)]
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    found = operator_probabilities(model, AutoTokenizer.from_pretrained(args.model), records)
    print(f"{len(found['×'])} answers that multiply: median p(' ×') {statistics.median(found['×']):.4f}, "
          f"median p(' +') {statistics.median(found['+']):.4f} at the same place")


if __name__ == "__main__":
    main()
