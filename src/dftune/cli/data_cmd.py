"""`dftune data check [FILES...] [--key value ...]`: validate data without training; exit 0 when every record is valid,
else 1 (as `train` would stop on them): invalid records, or no record at all (empty or blank-only files).

It reads the data keys `train` reads (every `DataArguments` field, and stage dpo's keys that fit pairs to the length:
the fields of `PreferenceLimits`), parsed by `train`'s own parser, so a check and a run agree: the same files
(`data_files`, `eval_files`, LLaMA-Factory's `dataset`/`eval_dataset`, `max_samples`), the same template keys, the
same length policy, the same errors for a bad value.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from dftune.cli.checks import NoValidRecords, positive_int
from dftune.config.data_args import DataArguments
from dftune.config.help_text import help_text
from dftune.data.lengths import PreferenceLimits
from dftune.data.report import REPORT_FILE
from dftune.errors import DftuneError
from dftune.outputs import output_file
from dftune.runtime.disk import disk_full_guard

STAGES = ("sft", "dpo")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data check` to the top-level subparsers; `args.func(args)` returns the exit code."""
    data = subparsers.add_parser("data", help="inspect and validate training data")
    commands = data.add_subparsers(dest="data_command", required=True)
    check = commands.add_parser(
        "check",
        help="validate records (and token lengths with --tokenizer) without training",
        description="Validate every record; print a per-file table and the bad records. Exit 1 if any is bad "
        "(with on_bad_record skip: only when none is left). The data keys are those of `dftune train`.",
    )
    check.add_argument("files", nargs="*", help=".jsonl/.json/.parquet files, globs or directories (added to "
                       "data_files; optional with --data_files or --dataset)")  # fmt: skip
    check.add_argument("--tokenizer", help="tokenizer directory: applies the chat template and max_length, adds "
                       "token length statistics")  # fmt: skip
    check.add_argument("--report", help="write the full JSON report here")
    check.add_argument("--show_labels", type=positive_int, metavar="N",
                       help="print the first N encoded samples with their trained tokens marked (needs --tokenizer)")
    check.add_argument("--stage", choices=STAGES, default="sft",
                       help="sft: conversations (also dllm); dpo: preference pairs (prompt/chosen/rejected)")
    keys = check.add_argument_group("data keys (read as `dftune train` reads them)")
    for f in data_key_fields():
        kind = _kind(f)
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        keys.add_argument(f"--{f.name}", nargs=_arity(f), default=argparse.SUPPRESS,
                          metavar="{" + ",".join(choices) + "}" if choices else f.name.upper(),
                          help=help_text(f.metadata.get("help", "stage dpo: how pairs are fitted to the length "
                                                        "(`dftune train --help`)"), default))  # fmt: skip
    check.set_defaults(func=run_check)


def data_key_fields() -> list[Field]:
    """The keys `train` reads data with: DataArguments', then stage dpo's that fit pairs (PreferenceLimits' others)."""
    own = list(fields(DataArguments))
    names = {f.name for f in own}
    return own + [f for f in fields(PreferenceLimits) if f.name not in names]


@functools.cache
def _hints() -> dict[str, Any]:
    """The data keys' types, resolved once (every CLI start registers `data check`)."""
    return {**typing.get_type_hints(PreferenceLimits), **typing.get_type_hints(DataArguments)}


def _kind(f: Field) -> Any:
    return _hints()[f.name]


def _arity(f: Field) -> str | None:
    """How many words the key takes on the command line: lists several, a bool none or one, the rest one."""
    kind = _kind(f)
    return "+" if typing.get_origin(kind) is list else "?" if kind is bool else None


def data_config(args: argparse.Namespace) -> Any:
    """The RunConfig `train` would parse from these data keys (its other keys at their defaults)."""
    from dftune.run import parse_config

    argv = ["--stage", args.stage]
    given = {f.name: getattr(args, f.name) for f in data_key_fields() if hasattr(args, f.name)}
    given["data_files"] = [*args.files, *given.get("data_files", [])]
    for key, words in given.items():
        if words != []:
            argv += [f"--{key}", *([] if words is None else [words] if isinstance(words, str) else words)]
    return parse_config(argv)


def run_check(args: argparse.Namespace) -> int:
    for flag, given in (("max_length", hasattr(args, "max_length")), ("show_labels", args.show_labels is not None)):
        if given and args.tokenizer is None:
            raise DftuneError(f"--{flag} needs --tokenizer: the tokens are the tokenizer's (--tokenizer DIR)")
    if args.show_labels is not None and args.stage == "dpo":
        raise DftuneError("--show_labels shows sft samples; preference pairs train every reply token (drop it)")
    config = data_config(args)
    data = config.data
    if args.report:
        inputs = [*data.data_files, *data.eval_files, args.tokenizer] + ([data.dataset_dir] if data.dataset else [])
        output_file(args.report, "--report", REPORT_FILE, inputs=inputs)
    from dftune.data.prepare import resolve_splits

    sources = [source for split in resolve_splits(data, ranking=args.stage == "dpo").values() for source in split]
    paths = [path for source in sources for path in source.paths]
    tokenizer = None if args.tokenizer is None else _tokenizer(args.tokenizer, data)
    max_length = None if tokenizer is None else data.max_length
    lengths: list[int] = []
    if args.stage == "dpo":
        from dftune.data.preference import collect_preferences
        from dftune.stages.keys import preference_limits

        _, report = collect_preferences(sources, tokenizer, preference_limits(config),
                                        special_tokens_in_content=data.special_tokens_in_content)
    elif tokenizer is None:
        from dftune.data.validate import collect_conversations

        _, report = collect_conversations(sources)
    else:
        from dftune.data.validate import validate_and_encode

        dataset, report = validate_and_encode(
            sources, tokenizer, max_length=max_length, mask_history=data.mask_history,
            num_proc=data.preprocessing_num_workers, long_conversations=data.long_conversations,
            reply_share=data.reply_share, special_tokens_in_content=data.special_tokens_in_content,
        )  # fmt: skip
        lengths = list(dataset["num_tokens"])

    print(report.format_table())
    if report.empty_replies:
        print(f"\nwarning: {report.format_empty_replies()}")
    if lengths:
        print(_length_stats(lengths, max_length))
    if args.show_labels:
        _show_labels(dataset, tokenizer, args.show_labels)
    if args.report:
        with disk_full_guard(Path(args.report), what="the report", kept="The data is untouched.",
                             fix="Free space or write the report elsewhere."):
            report.save(args.report)
    if report.rejected:
        print(f"\n{report.rejected} invalid records:\n{report.format_errors(20, args.report)}")
        if data.on_bad_record == "error" or report.kept == 0:
            return 1
    if report.total == 0:
        raise NoValidRecords(f"no records in {', '.join(paths)}: the files are empty or blank (train would stop "
                             "with \"no valid training records\"); add records, one JSON object per line")
    return 0


def _show_labels(dataset: Any, tokenizer: Any, count: int) -> None:
    """The first `count` samples, trained tokens green on a terminal and in [[...]] otherwise."""
    from dftune.data.label_view import label_view

    colour = sys.stdout.isatty()
    for number, sample in enumerate(dataset.select(range(min(count, len(dataset)))), start=1):
        print(f"\n--- sample {number} of {len(dataset)} ({sample['source']}) ---")
        print(label_view(sample["input_ids"], sample["labels"], tokenizer, colour=colour))


def _tokenizer(path: str, data: DataArguments) -> Any:
    """The tokenizer with the chat template `train` renders the data with (`chat_template`, `template` keys)."""
    from dftune.models.loading import tokenizer_at
    from dftune.stages.common import with_template_keys

    return with_template_keys(tokenizer_at(path, "--tokenizer"), data, f"--tokenizer {path}")


def _length_stats(lengths: list[int], max_length: int | None) -> str:
    """min/mean/p50/p95/max tokens of the valid records, and how many are longer than max_length."""
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    line = (
        f"\ntokens per record: min {ordered[0]}, mean {statistics.fmean(ordered):.1f}, "
        f"p50 {statistics.median_low(ordered)}, p95 {p95}, max {ordered[-1]}"
    )
    if max_length is not None:
        line += f"; truncated to {max_length}: {sum(n > max_length for n in ordered)} of {len(ordered)}"
    return line
