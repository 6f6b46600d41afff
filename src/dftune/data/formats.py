"""Turn the common conversation layouts into ChatML messages (`[{"role", "content"}]`), with a reason when not.

Accepted SFT layouts, tried in this order:
  messages / conversations   (role/content, or ShareGPT from/value with human/gpt/system)
  prompt + completion        (strings, or lists of messages)
  instruction (+ input) + output   (alpaca)
  input + output
A top-level `system` string is prepended as a system message when the conversation has none. Role names are
read in any case and without surrounding spaces (`User`, `ASSISTANT`, `Human`). A conversation may open with a
reply (ShareGPT's lone `gpt` turn, `prompt: []`): it is trained with an empty prompt (`dftune.data.encode`).
"""

from __future__ import annotations

from typing import Any

from dftune.errors import DftuneError

Messages = list[dict[str, str]]

ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "human": "user",
    "gpt": "assistant",
}


class InvalidRecord(DftuneError):
    """A record that cannot be trained on; `reason` is a short fixed category used for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def normalize_messages(record: Any) -> Messages:
    """ChatML messages of one SFT record, checked to hold at least one assistant turn."""
    if not isinstance(record, dict):
        raise InvalidRecord("not an object", type(record).__name__)
    messages = _conversation(record)
    if not any(m["role"] == "assistant" for m in messages):
        raise InvalidRecord("no assistant turn")
    return messages


def normalize_preference(record: Any) -> dict[str, Messages]:
    """`{"prompt", "chosen", "rejected"}` as message lists, from explicit or implicit-prompt preference records.

    Explicit: `prompt` (string or messages) with `chosen`/`rejected` replies (strings or messages).
    Implicit: no `prompt`; `chosen`/`rejected` are whole conversations whose shared first turns are the prompt,
    split at the first differing message, which must be an assistant turn.
    """
    if not isinstance(record, dict):
        raise InvalidRecord("not an object", type(record).__name__)
    if "chosen" not in record or "rejected" not in record:
        raise InvalidRecord("no chosen/rejected")
    chosen = _messages(record["chosen"], default_role="assistant")
    rejected = _messages(record["rejected"], default_role="assistant")
    if "prompt" in record:
        prompt = _messages(record["prompt"], default_role="user")
    else:
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == len(chosen) == len(rejected):
            raise InvalidRecord("chosen equals rejected")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if any(part and part[0]["role"] != "assistant" for part in (chosen, rejected)):
            raise InvalidRecord("prompt not before an assistant turn", f"conversations differ at message {shared}")
    prompt = _with_system(record, prompt)
    if not prompt:
        raise InvalidRecord("no prompt")
    if prompt[-1]["role"] == "assistant":
        raise InvalidRecord("prompt not before an assistant turn", "the prompt ends with an assistant message")
    for reply in (chosen, rejected):
        if not any(m["role"] == "assistant" for m in reply):
            raise InvalidRecord("no assistant turn", "in chosen or rejected")
    if chosen == rejected:
        raise InvalidRecord("chosen equals rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _conversation(record: dict[str, Any]) -> Messages:
    for key in ("messages", "conversations"):
        if key in record:
            return _with_system(record, _message_list(record[key]))
    if "prompt" in record and "completion" in record:
        prompt = [] if record["prompt"] == [] else _messages(record["prompt"], default_role="user")  # [] = no prompt
        turns = prompt + _messages(record["completion"], default_role="assistant")
    elif "instruction" in record and "output" in record:
        instruction, extra = _text(record["instruction"]), record.get("input")
        user = f"{instruction}\n\n{_text(extra)}" if extra else instruction
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"])}]
    elif "input" in record and "output" in record:
        turns = [
            {"role": "user", "content": _text(record["input"])},
            {"role": "assistant", "content": _text(record["output"])},
        ]
    else:
        raise InvalidRecord("no messages", f"keys: {', '.join(sorted(map(str, record))) or 'none'}")
    return _with_system(record, turns)


def _messages(value: Any, *, default_role: str) -> Messages:
    """A string becomes one message of `default_role`; a list is read as messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    return _message_list(value)


def _message_list(value: Any) -> Messages:
    if not isinstance(value, list):
        raise InvalidRecord("messages not a list", type(value).__name__)
    if not value:
        raise InvalidRecord("no messages", "empty list")
    return [_message(item, position) for position, item in enumerate(value)]


def _message(item: Any, position: int) -> dict[str, str]:
    if not isinstance(item, dict):
        raise InvalidRecord("message not an object", f"message {position}")
    role = item.get("role", item.get("from"))
    if role is None:
        raise InvalidRecord("missing role", f"message {position}")
    if not isinstance(role, str) or role.strip().lower() not in ROLES:
        raise InvalidRecord("unknown role", f"{role!r} in message {position}")
    content = item.get("content", item.get("value"))
    try:
        text = _text(content)
    except InvalidRecord as exc:
        raise InvalidRecord(exc.reason, f"{exc.detail} in message {position}") from None
    return {"role": ROLES[role.strip().lower()], "content": text}


def _text(content: Any) -> str:
    """A string, or the concatenation of a list of `{"type": "text", "text": ...}` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    kind = "a list with non-text parts" if isinstance(content, list) else type(content).__name__
    raise InvalidRecord("content not text", kind)


def _with_system(record: dict[str, Any], messages: Messages) -> Messages:
    system = record.get("system")
    if isinstance(system, str) and system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages
