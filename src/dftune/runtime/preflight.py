"""Checks every stage runs, once: the model folder and the tokenizer fail in seconds, before any data is tokenised
or weights load; eval data must exist when an eval_strategy asks for it."""

from __future__ import annotations

from datasets import Dataset
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase, TrainingArguments

from dftune.config.model_args import ModelArguments
from dftune.data.encode import chat_template
from dftune.errors import DftuneError
from dftune.models.integrity import check_local_model
from dftune.models.loading import load_tokenizer


def check_model_path(name: str | None) -> None:
    """A local model folder must hold a config and whole safetensors weights; a Hub name is left to transformers."""
    check_local_model(name)


def check_template(tokenizer: PreTrainedTokenizerBase, origin: str | None = None) -> str:
    """The shortest conversation's prompt (an empty user turn + the reply header) in the tokenizer's chat template.

    The first render of every command that renders: a template Jinja cannot compile, or that its sandbox refuses
    (`__class__`, a method it does not allow), or that raises by itself, is one DftuneError naming where the template
    came from (`origin`, default the tokenizer's folder), not a traceback."""
    try:
        return tokenizer.apply_chat_template([{"role": "user", "content": ""}], chat_template=chat_template(tokenizer),
                                             tokenize=False, add_generation_prompt=True)  # fmt: skip
    except TemplateError as err:
        line = f" (template line {err.lineno})" if getattr(err, "lineno", None) else ""
        raise DftuneError(
            f"the chat template ({origin or f'the tokenizer of {tokenizer.name_or_path}'}) cannot render a "
            f"conversation{line}: {type(err).__name__}: {str(err).rstrip('.')}; fix the template (it runs in Jinja's "
            "sandbox: no attributes such as __class__, no Python calls beyond what transformers provides), or give "
            "another with chat_template"
        ) from None


def template_overhead(tokenizer: PreTrainedTokenizerBase, origin: str | None = None) -> int:
    """Tokens before the first reply token of the shortest conversation (an empty user turn + the reply header)."""
    text = check_template(tokenizer, origin)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_max_length(tokenizer: PreTrainedTokenizerBase, max_length: int, origin: str | None = None) -> None:
    """max_length must leave room for at least one reply token after the template's own tokens (`origin`: where the
    template came from, for its errors)."""
    overhead = template_overhead(tokenizer, origin)
    if max_length <= overhead:
        raise DftuneError(
            f"max_length {max_length} leaves no room for a reply: the chat template alone takes {overhead} tokens "
            "(an empty user turn and the assistant header), and samples keep their left part; set max_length well "
            f"above {overhead}"
        )


def load_checked_tokenizer(args: ModelArguments, max_length: int) -> PreTrainedTokenizerBase:
    """The run's tokenizer, with its chat template (ChatML when it had none), once `max_length` is known to leave
    room for a reply after the template."""
    tokenizer = load_tokenizer(args)
    # The template the data is rendered with is saved with the tokenizer (the Trainer saves it with the model), so
    # that `generate` and `eval` prompt the trained model as it was trained, not in whatever format they default to.
    tokenizer.chat_template = chat_template(tokenizer)
    check_max_length(tokenizer, max_length)
    return tokenizer


def require_eval_data(eval_dataset: Dataset | None, training: TrainingArguments) -> None:
    """An eval_strategy other than no needs held-out data (eval_files or validation_split_percentage)."""
    if eval_dataset is None and training.eval_strategy != "no":
        raise DftuneError(
            f"eval_strategy: {training.eval_strategy.value} needs eval data: "
            "set eval_files or validation_split_percentage"
        )
