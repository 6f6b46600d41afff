"""`dftune eval --model DIR --data FILE [--adapter DIR]`: held-out accuracy by greedy generation (for a
masked-diffusion LM, by its sampler); `--lm_eval_tasks t1,t2` instead of `--data`: lm-evaluation-harness tasks
through the dftune backend (`dftune.harness`, the `lmeval` extra)."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from dftune.cli.checks import NoValidRecords, positive_int
from dftune.cli.decoding_flags import add_decoding_flags, decoding_options


def register(subparsers: argparse._SubParsersAction) -> None:
    from dftune.evaluation import EXTRACTORS

    ev = subparsers.add_parser("eval", help="generation-based accuracy on held-out ChatML records")
    ev.add_argument("--model", required=True, help="model folder (the base model when --adapter is given)")
    ev.add_argument("--adapter", help="a LoRA adapter folder to apply on top of --model")
    ev.add_argument("--data", nargs="+", help="records whose last assistant turn is the reference")
    ev.add_argument("--extractor", default="exact", choices=sorted(EXTRACTORS))
    ev.add_argument("--batch_size", type=positive_int, default=32)
    ev.add_argument("--limit", type=positive_int, help="evaluate the first N records (of each lm-eval task) only")
    ev.add_argument("--output", help="per-record results as JSONL (default: eval_results.jsonl beside the model); "
                    "with --lm_eval_tasks, lm-eval's results as JSON (default: lm_eval_results.json there)")
    ev.add_argument("--lm_eval_tasks", type=_task_list, metavar="T1,T2",
                    help="lm-evaluation-harness tasks instead of --data (needs: pip install -e '.[lmeval]')")
    ev.add_argument("--lm_eval_include_path", metavar="DIR", help="a folder of your own lm-eval task YAMLs")
    ev.add_argument("--num_fewshot", type=int, help="lm-eval: few-shot examples per prompt (default: the task's)")
    add_decoding_flags(ev)
    ev.set_defaults(func=run_eval)


def _task_list(text: str) -> list[str]:
    """argparse type: comma-separated lm-eval task names, none empty."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected task names separated by commas, got {text!r}")
    return names


def run_eval(args: argparse.Namespace) -> int:
    from dftune.errors import DftuneError

    if (args.data is None) == (args.lm_eval_tasks is None):
        raise DftuneError("dftune eval takes --data FILE (generation accuracy) or --lm_eval_tasks T1,T2 "
                          "(lm-evaluation-harness), one of the two")
    if args.lm_eval_tasks is not None:
        return _run_lm_eval(args)
    from dftune.diffusion import sample_replies
    from dftune.evaluation.generate import evaluate_records
    from dftune.harness.loaded import load_evaluated
    from dftune.outputs import output_file

    options = decoding_options(args)  # checked before a model loads
    conversations = _conversations(args.data)[: args.limit]
    output = output_file(args.output or str(Path(args.adapter or args.model) / "eval_results.jsonl"), "--output",
                         "eval_results.jsonl", inputs=[*args.data, args.model, args.adapter])
    loaded = load_evaluated(args.model, args.adapter,  # a causal model refuses --steps, ... before its weights load
                            check_kind=lambda diffusion: decoding_options(args, diffusion=diffusion))
    replies_of = None
    if loaded.diffusion:  # a masked-diffusion LM replies through the sampler, with the decoding flags
        replies_of = partial(
            sample_replies, loaded.model, loaded.tokenizer, mask_token_id=loaded.mask_token_id,
            options=options, batch_size=args.batch_size, shift_logits=loaded.shift_logits,
        )  # fmt: skip
    report = evaluate_records(
        loaded.model, loaded.tokenizer, conversations, extractor=args.extractor, replies_of=replies_of,
        max_new_tokens=options.max_new_tokens, min_new_tokens=options.min_new_tokens,
        temperature=options.temperature, batch_size=args.batch_size,
    )  # fmt: skip
    report.write_jsonl(output)
    print(f"{report.summary()}; per-record results: {output}")
    return 0


def _run_lm_eval(args: argparse.Namespace) -> int:
    """lm-eval's tasks on the model (and adapter); its results table printed, its results JSON written. The
    diffusion decoding flags given (--steps, --remasking, ...) reach a diffusion model's generate_until; a task's
    own generation_kwargs set max_new_tokens (max_gen_toks) and temperature."""
    from dftune.harness.run import require_lm_eval, run_lm_eval, summary, write_results
    from dftune.outputs import output_file

    require_lm_eval("--lm_eval_tasks")
    options = decoding_options(args)
    output = output_file(args.output or str(Path(args.adapter or args.model) / "lm_eval_results.json"), "--output",
                         "lm_eval_results.json", inputs=[args.model, args.adapter, args.lm_eval_include_path])
    results = run_lm_eval(args.model, args.adapter, args.lm_eval_tasks, include_path=args.lm_eval_include_path,
                          limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                          model_args={key: getattr(options, key) for key in options.diffusion_keys_given()})
    write_results(results, output)
    print(f"{summary(results)}\nlm-eval results: {output}")
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
