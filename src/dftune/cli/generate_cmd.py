"""`dftune generate --model DIR --prompt TEXT`: one reply from a causal LM (HF generate) or a diffusion LM (the
masked-diffusion sampler), through the chat template. A LoRA output folder loads onto its base model."""

from __future__ import annotations

import argparse

from dftune.cli.decoding_flags import add_decoding_flags, decoding_options
from dftune.errors import DftuneError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate` to the top-level subparsers; `args.func(args)` returns the exit code."""
    gen = subparsers.add_parser(
        "generate",
        help="reply to one prompt with a trained model (causal or masked-diffusion)",
        description="Reply to PROMPT as the user turn of a chat. Diffusion models (masked LMs, is_causal: false, "
        "or a mask_token_id in the config) use the masked-diffusion sampler; others use HF generate.",
    )
    gen.add_argument("--model", required=True, help="model folder (a `dftune train` output_dir) or Hub name")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--system", help="optional system message")
    gen.add_argument("--kind", choices=["auto", "causal", "diffusion"], default="auto")
    gen.add_argument("--mask_token_id", type=int, help="diffusion: default from the config or tokenizer")
    add_decoding_flags(gen)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--trust_remote_code", action="store_true")
    gen.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoConfig

    from dftune.config.model_args import ModelArguments
    from dftune.diffusion.sampler import sample_replies
    from dftune.harness.loaded import split_adapter
    from dftune.models.integrity import check_local_model
    from dftune.models.loading import is_diffusion_config, load_diffusion_model, resolve_mask_token_id, tokenizer_at
    from dftune.runtime.checkpoints import check_not_being_written
    from dftune.runtime.preflight import check_template

    options = decoding_options(args)  # checked before a model loads
    torch.manual_seed(args.seed)
    check_not_being_written(args.model, "--model")
    check_local_model(args.model, "--model")  # a missing folder, no weights or a truncated file: said so, no Hub call
    base, _ = split_adapter(args.model, None, "--model")  # the folder may be a LoRA adapter on its base
    tokenizer = tokenizer_at(args.model, "--model", trust_remote_code=args.trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise DftuneError(f"cannot load --model {args.model!r}: {err}") from None
    if tokenizer.chat_template:  # the one that will render the prompt
        check_template(tokenizer, f"the tokenizer of --model {args.model}")
    diffusion = args.kind == "diffusion" or (args.kind == "auto" and is_diffusion_config(config))
    decoding_options(args, diffusion=diffusion)  # a causal model refuses --steps, --remasking, ...
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    if diffusion:
        model = load_diffusion_model(
            ModelArguments(model_name_or_path=base, trust_remote_code=args.trust_remote_code)
        )
        model = _with_adapter(model, args.model, base)
        reply = sample_replies(
            model, tokenizer, [messages],
            mask_token_id=resolve_mask_token_id(args.mask_token_id, config, tokenizer), options=options,
            shift_logits=bool(getattr(config, "diffusion_shift_logits", False)),
        )[0]  # fmt: skip
    else:
        reply = _causal_reply(args, base, tokenizer, messages, options)
    print(reply)
    return 0


def _causal_reply(args: argparse.Namespace, base: str, tokenizer, messages, options) -> str:
    from dftune.config.model_args import ModelArguments
    from dftune.evaluation.generate import generate_replies
    from dftune.models.loading import load_model

    base_args = ModelArguments(model_name_or_path=base, torch_dtype="auto", trust_remote_code=args.trust_remote_code)
    model = _with_adapter(load_model(base_args, what="--model"), args.model, base)
    replies = generate_replies(model, tokenizer, [messages], max_new_tokens=options.max_new_tokens,
                               min_new_tokens=options.min_new_tokens, temperature=options.temperature)
    return replies[0]


def _with_adapter(model, path: str, base: str):
    if base == path:
        return model
    from dftune.models.loading import load_adapter

    return load_adapter(model, path)
