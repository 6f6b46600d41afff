"""LLaMA-Factory's data folder as its users have it, written here from the public format (not copied): a
dataset_info.json registry and demo files like its identity / alpaca_en_demo / dpo_en_demo, plus entries of the
layouts dftune does not train."""

from __future__ import annotations

import json
from pathlib import Path

INFO = {
    "identity": {"file_name": "identity.json"},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "dpo_en_demo": {
        "file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "openai_style": {
        "file_name": "chats", "formatting": "sharegpt", "columns": {"messages": "messages", "system": "system"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    "alpaca_pairs": {"file_name": "alpaca_pairs.jsonl", "ranking": True,
                     "columns": {"prompt": "instruction", "query": "input",
                                 "chosen": "chosen", "rejected": "rejected"}},
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"}},
    "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "kto_tag": "label"}},
    "glaive_toolcall_en_demo": {"file_name": "glaive.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"}},
    "hub_alpaca": {"hf_hub_url": "someone/alpaca-somewhere"},
    "ms_only": {"ms_hub_url": "someone/elsewhere"},
}  # fmt: skip


def identity(n: int = 6) -> list[dict]:
    questions = ["hi", "hello", "Who are you?", "What is your name?", "Introduce yourself", "Are you ChatGPT?"]
    return [{"instruction": questions[i % len(questions)], "input": "",
             "output": "I am {{name}}, an AI assistant developed by {{author}}."} for i in range(n)]  # fmt: skip


def alpaca(n: int = 6) -> list[dict]:
    return [{"instruction": f"Add {i} and {i + 2}.", "input": "Answer with a number." if i % 2 else "",
             "output": str(2 * i + 2)} for i in range(n)]  # fmt: skip


def dpo_pairs(n: int = 6) -> list[dict]:
    return [{"conversations": [{"from": "human", "value": f"What is {i} + 1?"}],
             "chosen": {"from": "gpt", "value": str(i + 1)}, "rejected": {"from": "gpt", "value": str(i + 7)}}
            for i in range(n)]  # fmt: skip


def write_data_folder(root: Path) -> Path:
    """`root/data` with dataset_info.json and every file it names."""
    data = root / "data"
    (data / "chats").mkdir(parents=True)
    (data / "dataset_info.json").write_text(json.dumps(INFO, indent=2), encoding="utf-8")
    (data / "identity.json").write_text(json.dumps(identity(), indent=2), encoding="utf-8")
    (data / "alpaca_en_demo.json").write_text(json.dumps(alpaca(), indent=2), encoding="utf-8")
    (data / "dpo_en_demo.json").write_text(json.dumps(dpo_pairs(), indent=2), encoding="utf-8")
    chats = [{"system": "Be brief.", "messages": [{"role": "user", "content": "2+2?"},
                                                  {"role": "assistant", "content": "4"}]},
             {"messages": [{"role": "user", "content": "x"}, {"role": "function_call", "content": "{}"}]},
             {"messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "a"},
                           {"role": "assistant", "content": "b"}]}]  # fmt: skip
    (data / "chats" / "part1.jsonl").write_text("\n".join(json.dumps(c) for c in chats) + "\n", encoding="utf-8")
    pairs = [{"instruction": "Say yes", "input": "", "chosen": "yes", "rejected": "no"}]
    (data / "alpaca_pairs.jsonl").write_text(json.dumps(pairs[0]) + "\n", encoding="utf-8")
    for name in ("mllm_demo.json", "kto_en_demo.json", "glaive.json"):
        (data / name).write_text("[]", encoding="utf-8")
    return data
