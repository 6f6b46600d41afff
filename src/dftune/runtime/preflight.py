"""Checks every stage runs, once: the model folder and the tokenizer fail in seconds, before any data is tokenised
or weights load; eval data must exist when an eval_strategy asks for it."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainingArguments

from dftune.config.model_args import ModelArguments
from dftune.data.encode import chat_template
from dftune.errors import DftuneError
from dftune.models.loading import load_tokenizer

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def _looks_like_path(name: str) -> bool:
    """A Hub name is `org/name` or `name`; anything else that is not on disk is a path that is missing."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def check_model_path(name: str | None) -> None:
    """A local model folder must hold a config and safetensors weights; a Hub name is left to transformers."""
    if not name:
        raise DftuneError("model_name_or_path is required (a local folder, e.g. from `dftune init-model`)")
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_like_path(name):
            raise DftuneError(f"model_name_or_path {name}: no such folder")
        return
    if not path.is_dir():
        raise DftuneError(f"model_name_or_path {name} is a file; give the model's folder (config.json and weights)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise DftuneError(f"model_name_or_path {name} holds no config.json: not a transformers model folder")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise DftuneError(
                f"model_name_or_path {name} holds pickled weights ({pickled[0]}) but no .safetensors: dftune reads "
                "safetensors only, since loading a pickle can run code; convert them once with "
                "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)` in a trusted environment"
            )
        raise DftuneError(f"model_name_or_path {name} holds no weights (*.safetensors): was the model saved?")


def template_overhead(tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens before the first reply token of the shortest conversation (an empty user turn + the reply header)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": ""}], chat_template=chat_template(tokenizer), tokenize=False,
        add_generation_prompt=True,
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_max_length(tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """max_length must leave room for at least one reply token after the template's own tokens."""
    overhead = template_overhead(tokenizer)
    if max_length <= overhead:
        raise DftuneError(
            f"max_length {max_length} leaves no room for a reply: the chat template alone takes {overhead} tokens "
            "(an empty user turn and the assistant header), and samples keep their left part; set max_length well "
            f"above {overhead}"
        )


def load_checked_tokenizer(args: ModelArguments, max_length: int) -> PreTrainedTokenizerBase:
    """The run's tokenizer, once `max_length` is known to leave room for a reply after the chat template."""
    tokenizer = load_tokenizer(args)
    check_max_length(tokenizer, max_length)
    return tokenizer


def require_eval_data(eval_dataset: Dataset | None, training: TrainingArguments) -> None:
    """An eval_strategy other than no needs held-out data (eval_files or validation_split_percentage)."""
    if eval_dataset is None and training.eval_strategy != "no":
        raise DftuneError(
            f"eval_strategy: {training.eval_strategy.value} needs eval data: "
            "set eval_files or validation_split_percentage"
        )
