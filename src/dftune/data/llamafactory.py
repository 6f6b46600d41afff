"""LLaMA-Factory's data registry: `dataset: a,b` names entries of `<dataset_dir>/dataset_info.json`.

An entry gives `file_name` (a file or a folder, relative to dataset_dir) or a hub (`hf_hub_url`, with `subset`,
`split`, `folder`; `ms_hub_url`/`om_hub_url`/`script_url` are other hubs), `formatting` (alpaca, the default, or
sharegpt), `columns` (which record keys hold what) and, for sharegpt, `tags` (the role and content keys and the
role names); `ranking: true` marks preference pairs (stage dpo). Each entry becomes one `Source` named after it,
whose records keep their own `file:line` / `file[index]` and are converted to the layouts `dftune.data.formats`
reads (`{"messages"}` or `{"prompt", "chosen", "rejected"}`), the way LLaMA-Factory's converters read them
(alpaca: user = instruction, newline, input; history pairs before it; sharegpt: a leading system turn is the system
prompt). Layouts we do not train (images, videos, audios, KTO labels, tool definitions) are a DftuneError naming
the entry; a function-call or observation turn rejects its record with a reason.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from dftune.data.formats import InvalidRecord, Messages
from dftune.data.readers import Location, RawRecord, resolve_sources
from dftune.data.sources import Source
from dftune.errors import DftuneError

INFO_FILE = "dataset_info.json"
HUBS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")
ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None}
SHAREGPT = {"messages": "conversations", "system": None}
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}  # fmt: skip
UNSUPPORTED = {"images": "images", "videos": "videos", "audios": "audios", "kto_tag": "KTO labels",
               "tools": "tool definitions"}  # fmt: skip


def registry_sources(
    names: Sequence[str], dataset_dir: str, *, ranking: bool, max_samples: int | None = None
) -> list[Source]:
    """One Source per named entry (`ranking`: stage dpo wants preference entries, every other stage plain ones)."""
    if not names:
        return []
    if dataset_dir == "ONLINE":  # LLaMA-Factory: every name is a Hub dataset
        entries = {name: {"hf_hub_url": name, "ranking": ranking} for name in names}
    else:
        entries = read_info(Path(dataset_dir))
    return [entry_source(name, entries, Path(dataset_dir), ranking=ranking, max_samples=max_samples)
            for name in names]  # fmt: skip


def read_info(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / INFO_FILE
    if not path.is_file():
        raise DftuneError(f"dataset needs {path} (LLaMA-Factory's registry; set dataset_dir to its folder)")
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DftuneError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(info, dict):
        raise DftuneError(f"{path}: must map dataset names to entries")
    return info


def entry_source(
    name: str, entries: dict[str, Any], dataset_dir: Path, *, ranking: bool, max_samples: int | None
) -> Source:
    """The Source of one entry, after checking it names a layout we train and suits the stage."""
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise DftuneError(f"dataset {name!r} is not in {dataset_dir / INFO_FILE} (it lists: {known})")
    entry = entries[name]
    if not isinstance(entry, dict):
        raise DftuneError(f"dataset {name!r}: its entry in {INFO_FILE} must be an object")
    columns, formatting = dict(entry.get("columns") or {}), entry.get("formatting", "alpaca")
    for key, what in UNSUPPORTED.items():
        if columns.get(key):
            raise DftuneError(f"dataset {name!r}: column {key!r} holds {what}, which dftune does not train")
    if formatting not in ("alpaca", "sharegpt"):
        raise DftuneError(f"dataset {name!r}: formatting {formatting!r} is not alpaca or sharegpt")
    if bool(entry.get("ranking", False)) != ranking:
        want = "preference pairs (ranking: true)" if ranking else "conversations (no ranking)"
        raise DftuneError(f"dataset {name!r} does not suit this stage: it needs {want}")
    if entry.get("num_samples") is not None:
        raise DftuneError(f"dataset {name!r}: num_samples (sampling) is not supported; use max_samples")
    convert = partial(convert_record, name=name, formatting=formatting, ranking=ranking,
                      columns=columns, tags={**TAGS, **(entry.get("tags") or {})})  # fmt: skip
    settings = json.dumps(entry, sort_keys=True, default=str)
    if entry.get("file_name"):
        paths = tuple(resolve_sources([str(dataset_dir / entry["file_name"])]))
        return Source(name, paths, convert, max_samples, settings)
    hub = next((key for key in HUBS if entry.get(key)), None)
    if hub is None:
        raise DftuneError(f"dataset {name!r}: its entry names no file_name and no hub ({', '.join(HUBS)})")
    read = partial(read_hub, name=name, entry=entry, hub=hub, dataset_dir=dataset_dir)
    return Source(name, (str(entry[hub]),), convert, max_samples, settings, read=read,
                  content_hash=lambda _path: settings)  # fmt: skip


def read_hub(path: str, *, name: str, entry: dict[str, Any], hub: str, dataset_dir: Path) -> Iterator[RawRecord]:
    """Rows of a hub entry through `datasets` (Hugging Face only); offline, a DftuneError naming the entry within
    seconds instead of retries."""
    if hub in ("ms_hub_url", "om_hub_url") and not entry.get("hf_hub_url"):
        raise DftuneError(f"dataset {name!r}: {hub} (ModelScope/Modelers hubs) is not supported; use hf_hub_url "
                          "or download it and set file_name")  # fmt: skip
    if not _online():
        raise DftuneError(f"dataset {name!r}: {hub} {path} needs the Hugging Face Hub, which is not reachable "
                          "(offline); download it and set file_name in dataset_info.json")  # fmt: skip
    import datasets

    target = str(dataset_dir / path) if hub == "script_url" else path
    try:
        rows = datasets.load_dataset(target, name=entry.get("subset"), data_dir=entry.get("folder"),
                                     split=entry.get("split", "train"))  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-repo errors all mean the same to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DftuneError(f"dataset {name!r}: {hub} {path} could not be loaded: {first}") from exc
    for index, row in enumerate(rows):
        yield RawRecord(Location(path, index=index), row)


def _online() -> bool:
    """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE say so, or the Hub cannot be reached within 3 seconds."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def convert_record(
    record: Any, *, name: str, formatting: str, ranking: bool, columns: dict[str, str], tags: dict[str, str]
) -> dict[str, Any]:
    """A record of entry `name` in our layouts: `{"messages"}` (SFT) or `{"prompt", "chosen", "rejected"}`."""
    if not isinstance(record, dict):
        raise InvalidRecord("not an object", type(record).__name__)
    if formatting == "alpaca":
        cols = {**ALPACA, **({"chosen": "chosen", "rejected": "rejected"} if ranking else {}), **columns}
        prompt, system = _alpaca_prompt(record, cols), _field(record, cols.get("system"))
        replies = [_reply(record, cols["chosen"], tags), _reply(record, cols["rejected"], tags)] if ranking else None
        reply = None if ranking else [{"role": "assistant", "content": _text(record, cols["response"])}]
    else:
        cols = {**SHAREGPT, **({"chosen": "chosen", "rejected": "rejected"} if ranking else {}), **columns}
        turns = record.get(cols["messages"])
        if not isinstance(turns, list):
            raise InvalidRecord("messages not a list", f"{cols['messages']!r} in dataset {name!r}")
        messages = [_turn(turn, i, tags) for i, turn in enumerate(turns)]
        system = _field(record, cols.get("system"))
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        prompt, reply = (messages, None) if ranking else (messages, [])
        replies = [_reply(record, cols["chosen"], tags), _reply(record, cols["rejected"], tags)] if ranking else None
    head = [{"role": "system", "content": system}] if system else []
    if ranking:
        assert replies is not None
        return {"prompt": head + prompt, "chosen": replies[0], "rejected": replies[1]}
    return {"messages": head + prompt + (reply or [])}


def _alpaca_prompt(record: dict[str, Any], cols: dict[str, Any]) -> Messages:
    """History pairs, then the user turn: instruction and input joined by a newline (LLaMA-Factory's way)."""
    messages: Messages = []
    history = _field(record, cols.get("history"), default=[])
    if not isinstance(history, list):
        raise InvalidRecord("messages not a list", "history")
    for pair in history:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise InvalidRecord("content not text", "history holds a pair that is not two strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    parts = [_text(record, cols["prompt"])]
    query = _field(record, cols.get("query"))
    if query:
        parts.append(_text(record, cols["query"]))
    return messages + [{"role": "user", "content": "\n".join(parts)}]


def _turn(turn: Any, position: int, tags: dict[str, str]) -> dict[str, str]:
    if not isinstance(turn, dict):
        raise InvalidRecord("message not an object", f"message {position}")
    tag = turn.get(tags["role_tag"])
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}
    if tag in (tags["function_tag"], tags["observation_tag"]):
        raise InvalidRecord("tool-call turn", f"{tag!r} in message {position} (tool calls are not trained)")
    if tag not in roles:
        raise InvalidRecord("unknown role", f"{tag!r} in message {position}")
    content = turn.get(tags["content_tag"])
    if not isinstance(content, str):
        raise InvalidRecord("content not text", f"{type(content).__name__} in message {position}")
    return {"role": roles[tag], "content": content}


def _reply(record: dict[str, Any], column: str, tags: dict[str, str]) -> Messages:
    """chosen / rejected: a string, one message ({from, value} by the tags, or {role, content}), or a list."""
    value = record.get(column)
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidRecord("no chosen/rejected", f"{column!r}")
    return [_turn(v, i, tags) if isinstance(v, dict) and tags["role_tag"] in v else v for i, v in enumerate(value)]


def _field(record: dict[str, Any], column: str | None, default: Any = None) -> Any:
    return default if column is None else record.get(column, default) or default


def _text(record: dict[str, Any], column: str) -> str:
    value = record.get(column)
    if not isinstance(value, str):
        raise InvalidRecord("content not text", f"{column!r} is {type(value).__name__}")
    return value
