"""`dftune eval --model DIR --data FILE [--adapter DIR]`: held-out accuracy by greedy generation (for a
masked-diffusion LM, by its sampler)."""

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
    ev.add_argument("--data", required=True, nargs="+", help="records whose last assistant turn is the reference")
    ev.add_argument("--extractor", default="exact", choices=sorted(EXTRACTORS))
    ev.add_argument("--batch_size", type=positive_int, default=32)
    ev.add_argument("--limit", type=positive_int, help="evaluate the first N records only")
    ev.add_argument("--output", help="per-record results as JSONL (default: eval_results.jsonl beside the model)")
    add_decoding_flags(ev)
    ev.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from dftune.config.model_args import ModelArguments
    from dftune.diffusion import sample_replies
    from dftune.evaluation.generate import evaluate_records
    from dftune.models.integrity import check_local_model
    from dftune.models.loading import (
        check_vocabulary,
        is_diffusion_config,
        load_adapter,
        load_diffusion_model,
        load_model,
        resolve_mask_token_id,
        tokenizer_at,
    )
    from dftune.outputs import output_file
    from dftune.runtime.checkpoints import check_not_being_written
    from dftune.runtime.preflight import check_template

    options = decoding_options(args)  # checked before a model loads
    conversations = _conversations(args.data)[: args.limit]
    output = output_file(args.output or str(Path(args.adapter or args.model) / "eval_results.jsonl"), "--output",
                         "eval_results.jsonl", inputs=[*args.data, args.model, args.adapter])
    for name, flag in ((args.model, "--model"), (args.adapter, "--adapter")):
        check_not_being_written(name, flag)
        if name:
            check_local_model(name, flag)
    model_args = ModelArguments(model_name_or_path=args.model, torch_dtype="auto")
    config = AutoConfig.from_pretrained(args.model)
    diffusion = is_diffusion_config(config)
    decoding_options(args, diffusion=diffusion)  # a causal model refuses --steps, --remasking, ...
    model = load_diffusion_model(model_args) if diffusion else load_model(model_args, what="--model")
    source, flag = (args.adapter, "--adapter") if args.adapter else (args.model, "--model")
    tokenizer = tokenizer_at(source, flag)
    if tokenizer.chat_template:  # the one that will render the prompts
        check_template(tokenizer, f"the tokenizer of {flag} {source}")
    check_vocabulary(model, tokenizer, f"--model {args.model}")
    if args.adapter:
        model = load_adapter(model, args.adapter)
    replies_of = None
    if diffusion:  # a masked-diffusion LM replies through the sampler, with the decoding flags
        replies_of = partial(
            sample_replies, model, tokenizer, mask_token_id=resolve_mask_token_id(None, config, tokenizer),
            options=options, batch_size=args.batch_size,
            shift_logits=bool(getattr(config, "diffusion_shift_logits", False)),
        )  # fmt: skip
    report = evaluate_records(
        model, tokenizer, conversations, extractor=args.extractor, replies_of=replies_of,
        max_new_tokens=options.max_new_tokens, min_new_tokens=options.min_new_tokens,
        temperature=options.temperature, batch_size=args.batch_size,
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
