"""The decoding flags of `dftune generate` and `dftune eval`, made from `DecodingArguments` (the one definition that
stage dllm's keys share): one flag per field, its type, choices, default and help."""

from __future__ import annotations

import argparse
import re
import typing
from dataclasses import MISSING, fields

from dftune.config.decoding_args import REMASKING, USED_BY, DecodingArguments
from dftune.errors import DftuneError


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """Add `--max_new_tokens`, `--steps`, `--remasking`, ... (every `DecodingArguments` field) to `parser`."""
    hints = typing.get_type_hints(DecodingArguments)
    group = parser.add_argument_group("decoding", "the decoding keys (also stage dllm's, for its eval samples)")
    for f in fields(DecodingArguments):
        kind = hints[f.name]
        options = [t for t in typing.get_args(kind) if t is not type(None)] if typing.get_origin(kind) else [kind]
        choices = list(typing.get_args(kind)) if typing.get_origin(kind) is typing.Literal else None
        default = None if f.default is MISSING else f.default
        group.add_argument(f"--{f.name}", type=str if choices else options[0], choices=choices, default=default,
                           help=_help(f.metadata["help"], default))


def _help(text: str, default: object) -> str:
    """A key's help without the "decoding (...)" lead its group says already, with its default."""
    return text.removeprefix(USED_BY).lstrip(",: ") + (f" Default: {default}." if default is not None else "")


def _as_flags(message: str) -> str:
    """`message` with each key written as its flag (`steps` -> `--steps`), but not `remasking` as a noun after one of
    its values ("random remasking")."""
    names = "|".join(f.name for f in fields(DecodingArguments))
    noun = "".join(f"(?<!{value} )" for value in REMASKING)
    return re.sub(rf"(?<![\w-]){noun}({names})\b", r"--\1", message)


def decoding_options(args: argparse.Namespace, *, diffusion: bool = True) -> DecodingArguments:
    """The parsed decoding flags, checked (`DecodingArguments.__post_init__`); a user error names the flags (`--steps`, not `steps`). A causal
    model (`diffusion` false) refuses the diffusion-only ones rather than ignore them."""
    try:
        options = DecodingArguments(**{f.name: getattr(args, f.name) for f in fields(DecodingArguments)})
    except ValueError as err:
        raise DftuneError(_as_flags(str(err)) + " (see --help)") from None
    if not diffusion and (given := options.diffusion_keys_given()):
        raise DftuneError(f"--{' --'.join(given)}: only a masked-diffusion model uses these; this one is causal "
                          "(HF generate): leave them out")
    return options
