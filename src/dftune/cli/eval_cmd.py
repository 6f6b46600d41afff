"""`dftune eval --model DIR --data FILE [--adapter DIR]`: held-out accuracy by greedy generation."""

from __future__ import annotations

import argparse
from pathlib import Path

from dftune.cli.checks import NoValidRecords, output_file, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from dftune.evaluation import EXTRACTORS

    ev = subparsers.add_parser("eval", help="generation-based accuracy on held-out ChatML records")
    ev.add_argument("--model", required=True, help="model folder (the base model when --adapter is given)")
    ev.add_argument("--adapter", help="a LoRA adapter folder to apply on top of --model")
    ev.add_argument("--data", required=True, nargs="+", help="records whose last assistant turn is the reference")
    ev.add_argument("--extractor", default="exact", choices=sorted(EXTRACTORS))
    ev.add_argument("--max_new_tokens", type=positive_int, default=64)
    ev.add_argument("--batch_size", type=positive_int, default=32)
    ev.add_argument("--limit", type=positive_int, help="evaluate the first N records only")
    ev.add_argument("--output", help="per-record results as JSONL (default: eval_results.jsonl beside the model)")
    ev.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from dftune.config.model_args import ModelArguments
    from dftune.errors import DftuneError
    from dftune.evaluation import evaluate_records
    from dftune.models.integrity import check_local_model
    from dftune.models.loading import load_adapter, load_model

    conversations = _conversations(args.data)[: args.limit]
    output = output_file(args.output or str(Path(args.adapter or args.model) / "eval_results.jsonl"), "--output",
                         "eval_results.jsonl")
    check_local_model(args.model, "--model")
    if args.adapter:
        check_local_model(args.adapter, "--adapter")
    model = load_model(ModelArguments(model_name_or_path=args.model, torch_dtype="auto"), what="--model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.adapter or args.model)
    except OSError as err:
        raise DftuneError(f"cannot load {args.model!r}: {err}") from None
    if args.adapter:
        model = load_adapter(model, args.adapter)
    report = evaluate_records(
        model, tokenizer, conversations, extractor=args.extractor,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )  # fmt: skip
    report.write_jsonl(output)
    print(f"{report.summary()}; per-record results: {output}")
    return 0


def _conversations(data: list[str]) -> list[list[dict[str, str]]]:
    """Every record of `data` as messages ending in the reference reply; an error names the record's file:line."""
    from dftune.data import InvalidRecord, load_records, normalize_messages
    from dftune.errors import DftuneError

    conversations = []
    for raw in load_records(data):
        if raw.reason is not None:
            raise DftuneError(f"{raw.location}: {raw.reason}" + (f" ({raw.detail})" if raw.detail else "")
                              + "; fix the record or leave it out (`dftune data check` lists every bad one)")
        try:
            messages = normalize_messages(raw.value)
        except InvalidRecord as err:
            raise DftuneError(f"{raw.location}: {err}; fix the record or leave it out") from None
        if messages[-1]["role"] != "assistant":
            raise DftuneError(f"{raw.location}: the last message must be the reference assistant reply; fix the "
                              "record (end it with the expected reply) or leave it out")
        conversations.append(messages)
    if not conversations:
        raise NoValidRecords(f"no records in {', '.join(data)}: nothing to evaluate (the files are empty or blank)")
    return conversations
