"""`dftune data check FILES...`: validate data without training; exit 0 when every record is valid, else 1 (as
`train` would stop on them): invalid records, or no record at all (empty or blank-only files)."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from dftune.cli.checks import NoValidRecords, positive_int
from dftune.data.readers import resolve_sources
from dftune.data.report import REPORT_FILE
from dftune.data.validate import collect_conversations, validate_and_encode
from dftune.errors import DftuneError
from dftune.outputs import output_file
from dftune.runtime.disk import disk_full_guard


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data check` to the top-level subparsers; `args.func(args)` returns the exit code."""
    data = subparsers.add_parser("data", help="inspect and validate training data")
    commands = data.add_subparsers(dest="data_command", required=True)
    check = commands.add_parser(
        "check",
        help="validate records (and token lengths with --tokenizer) without training",
        description="Validate every record; print a per-file table and the bad records. Exit 1 if any is bad.",
    )
    check.add_argument("files", nargs="+", help=".jsonl/.json/.parquet files, globs or directories")
    check.add_argument("--tokenizer", help="tokenizer directory: adds token length statistics")
    check.add_argument("--max_length", type=positive_int, help="reject records with no assistant token within N tokens")
    check.add_argument("--report", help="write the full JSON report here")
    check.add_argument("--stage", choices=("sft", "dpo"), default="sft",
                       help="sft: conversations (also dllm); dpo: preference pairs (prompt/chosen/rejected)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.tokenizer is None:
        raise DftuneError("--max_length needs --tokenizer")
    if args.report:
        output_file(args.report, "--report", REPORT_FILE, inputs=[*args.files, args.tokenizer])
    sources = resolve_sources(args.files)
    lengths: list[int] = []
    if args.stage == "dpo":
        from dftune.data.lengths import PreferenceLimits
        from dftune.data.preference import collect_preferences

        tokenizer = None if args.tokenizer is None else _tokenizer(args.tokenizer)
        _, report = collect_preferences(sources, tokenizer, PreferenceLimits(args.max_length))
    elif args.tokenizer is None:
        _, report = collect_conversations(sources)
    else:
        dataset, report = validate_and_encode(sources, _tokenizer(args.tokenizer), max_length=args.max_length)
        lengths = list(dataset["num_tokens"])

    print(report.format_table())
    if lengths:
        print(_length_stats(lengths, args.max_length))
    if args.report:
        with disk_full_guard(Path(args.report), what="the report", kept="The data is untouched.",
                             fix="Free space or write the report elsewhere."):
            report.save(args.report)
    if report.rejected:
        print(f"\n{report.rejected} invalid records:\n{report.format_errors(20, args.report)}")
        return 1
    if report.total == 0:
        raise NoValidRecords(f"no records in {', '.join(sources)}: the files are empty or blank (train would stop "
                             "with \"no valid training records\"); add records, one JSON object per line")
    return 0


def _tokenizer(path: str):
    """The tokenizer of `path`, its chat template rendered once (a broken template is one error, not one per record)."""
    from dftune.models.loading import tokenizer_at
    from dftune.runtime.preflight import check_template

    tokenizer = tokenizer_at(path, "--tokenizer")
    check_template(tokenizer, f"the tokenizer of --tokenizer {path}")
    return tokenizer


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
