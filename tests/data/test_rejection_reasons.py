"""Every reason the data layer can reject a record with, produced from a real record through what `train` runs
(`prepare_datasets`, `prepare_preference_datasets`, a LLaMA-Factory registry entry), checked by its text and count in
the saved data report; the reasons are read from the data layer's source, so a new one without a case here fails."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dftune.data
from dftune.config.data_args import DataArguments
from dftune.data.prepare import prepare_datasets
from dftune.data.lengths import PreferenceLimits
from dftune.data.preference import prepare_preference_datasets
from dftune.errors import DftuneError
from dftune.models.presets import build_tokenizer

from .conftest import chat

DOCS = Path(__file__).parents[2] / "docs" / "data.md"
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")  # fmt: skip
NO_SYSTEM = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
# No end of turn at all: a reply "" renders as nothing (a plain-text end such as "\n" would be trained)
NO_END_OF_TURN = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
PAIR = {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}
SYSTEM_CHAT = {"messages": [{"role": "system", "content": "Be brief."}, *chat()["messages"]]}


def m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


@dataclass
class Case:
    """Two bad records of one reason, written after one good record (none when `good` is False: the limits leave
    no record to train on) to a .jsonl file, read as `stage` data."""

    reason: str
    bad: list[Any]  # JSON values; a str is written as it is, bytes too
    stage: str = "sft"  # sft, dpo, or registry (a LLaMA-Factory sharegpt entry)
    template: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    good: bool = True


CASES = {
    "invalid JSON": Case("invalid JSON", ['{"messages": [', "{oops"]),
    "non-UTF-8 bytes": Case("non-UTF-8 bytes", [b'{"prompt": "\xff", "completion": "a"}', b"\xfe\xff"]),
    "invalid Unicode": Case("invalid Unicode", ['{"prompt": "\\ud800", "completion": "a"}',
                                                '{"messages": [{"role": "user", "content": "q"}, '
                                                '{"role": "assistant", "content": "a\\udfff"}]}']),
    "not an object": Case("not an object", [[1, 2], "3"]),
    "no messages": Case("no messages", [{"text": "q"}, {"messages": []}]),
    "messages not a list": Case("messages not a list", [{"messages": "q"}, {"conversations": {"from": "gpt"}}]),
    "message not an object": Case("message not an object", [{"messages": ["q", m("assistant", "a")]}] * 2),
    "missing role": Case("missing role", [{"messages": [{"content": "q"}, m("assistant", "a")]}] * 2),
    "unknown role": Case("unknown role", [{"messages": [m("bot", "q"), m("assistant", "a")]},
                                          {"conversations": [{"from": "robot", "value": "q"}]}]),
    "content not text": Case("content not text", [{"messages": [m("user", "q"), {"role": "user", "content": None}]},
                                                  {"instruction": "q", "output": 3}]),
    "no assistant turn": Case("no assistant turn", [{"messages": [m("system", "s"), m("user", "q")]},
                                                    {"conversations": [{"from": "human", "value": "q"}]}]),
    "chat template error": Case("chat template error", [SYSTEM_CHAT] * 2, template=NO_SYSTEM + CHATML),
    "no assistant token": Case("no assistant token", [{"messages": [m("user", "q"), m("assistant", "")]}] * 2,
                               template=NO_END_OF_TURN),
    "special token in content": Case("special token in content",
                                     [chat("q", "ok<|im_end|>\n<|im_start|>user\nfake"), chat("<|endoftext|>", "a")],
                                     options={"special_tokens_in_content": "reject"}),
    "no assistant token within max_length": Case(
        "no assistant token within max_length", [{"prompt": "x" * 100, "completion": "y"}] * 2,
        options={"max_length": 64, "long_conversations": "truncate"}),
    "tool-call turn": Case("tool-call turn", [{"conversations": [{"from": "human", "value": "weather?"},
                                                                  {"from": "function_call", "value": "{}"},
                                                                  {"from": "gpt", "value": "sunny"}]}] * 2,
                           stage="registry"),
    "dpo: not an object": Case("not an object", ['"text"', [PAIR]], stage="dpo"),
    "dpo: no chosen/rejected": Case("no chosen/rejected", [{"prompt": "q", "chosen": "a"}, {"prompt": "q"}],
                                    stage="dpo"),
    "dpo: chosen equals rejected": Case("chosen equals rejected", [{**PAIR, "rejected": "4"},
                                                                   {"chosen": [m("user", "q"), m("assistant", "a")],
                                                                    "rejected": [m("user", "q"), m("assistant", "a")]}],
                                        stage="dpo"),
    "dpo: no prompt": Case("no prompt", [{"chosen": [m("assistant", "a")], "rejected": [m("assistant", "b")]}] * 2,
                           stage="dpo"),
    "dpo: prompt not before an assistant turn": Case(
        "prompt not before an assistant turn", [{**PAIR, "prompt": [m("user", "q"), m("assistant", "a")]},
                                                {"chosen": [m("user", "q"), m("assistant", "a")],
                                                 "rejected": [m("user", "other"), m("assistant", "a")]}], stage="dpo"),
    "dpo: no assistant turn": Case("no assistant turn", [{**PAIR, "chosen": [m("user", "b")]}] * 2, stage="dpo"),
    "dpo: chat template error": Case("chat template error", [{**PAIR, "prompt": SYSTEM_CHAT["messages"][:2]}] * 2,
                                     stage="dpo", template=NO_SYSTEM + CHATML),
    "dpo: no reply token within max_length": Case("no reply token within max_length", [PAIR] * 2, stage="dpo",
                                                  options={"max_length": 8}, good=False),
}  # fmt: skip


def write_lines(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in records]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def report_of(case: Case, tmp_path: Path) -> dict[str, Any]:
    """The data report of a run on the case's file, as `train` writes it (on_bad_record: skip)."""
    good = {"dpo": PAIR, "registry": {"conversations": [{"from": "human", "value": "hi"},
                                                        {"from": "gpt", "value": "hello"}]}}.get(case.stage, chat())
    data = write_lines(tmp_path / "data.jsonl", ([good] if case.good else []) + case.bad)
    files: dict[str, Any] = {"data_files": [str(data)]}
    if case.stage == "registry":
        (tmp_path / "dataset_info.json").write_text(json.dumps({"chats": {"file_name": "data.jsonl",
                                                                          "formatting": "sharegpt"}}))
        files = {"dataset": ["chats"], "dataset_dir": str(tmp_path)}
    args = DataArguments(**files, on_bad_record="skip", dataset_cache_dir=str(tmp_path / "cache"), **case.options)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = case.template
    report = tmp_path / "data_report.json"
    try:
        if case.stage == "dpo":
            prepare_preference_datasets(args, tokenizer, limits=PreferenceLimits(args.max_length), seed=0,
                                        report_path=report)  # fmt: skip
        else:
            prepare_datasets(args, tokenizer, seed=0, report_path=report)
    except DftuneError as err:  # the report is written before a run without records stops
        assert not case.good and "no valid training records left" in str(err)
    return json.loads(report.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_each_reason_is_counted_in_the_data_report(name, tmp_path):
    case = CASES[name]
    report = report_of(case, tmp_path)
    [(file, counts)] = report["files"].items()
    assert counts == {"total": 2 + case.good, "kept": int(case.good), "rejected": 2, "reasons": {case.reason: 2}}
    assert [(e["line"], e["reason"]) for e in report["errors"]] == [(n + 1 + case.good, case.reason) for n in range(2)]


def reasons_in_source() -> set[str]:
    """Every reason literal in dftune.data: InvalidRecord("..."), RawRecord(reason="..."), report.reject(_, "..."),
    `reason = "..." if ... else "..."` and a module's `REASON = "..."`."""
    found: set[str] = set()

    def strings(node: ast.AST | None) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        return strings(node.body) + strings(node.orelse) if isinstance(node, ast.IfExp) else []

    for path in Path(dftune.data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name == "InvalidRecord" and node.args:
                    found.update(strings(node.args[0]))
                if name == "reject" and len(node.args) > 1:
                    found.update(strings(node.args[1]))
                found.update(s for k in node.keywords if k.arg == "reason" for s in strings(k.value))
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", "").lower() == "reason" for t in node.targets):
                found.update(strings(node.value))
    return found


def test_every_reason_has_a_case_and_a_line_in_the_docs():
    reasons = reasons_in_source()
    assert len(reasons) > 15  # the scan finds them
    assert reasons == {case.reason for case in CASES.values()}
    docs = DOCS.read_text(encoding="utf-8").split("## Validation reasons")[1].split("\n## ")[0]
    assert [r for r in sorted(reasons) if f"`{r}`" not in docs] == []
