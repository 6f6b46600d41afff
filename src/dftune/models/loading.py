"""Every model dftune loads, in one place: causal, masked/diffusion, quantised, with LoRA or a saved adapter.

One safety policy: weights load from safetensors only (`use_safetensors=True` in the one `from_pretrained` below
that loads weights): loading a pickle can run code (docs/reliability.md). One set of quantisation rules for every
stage: `quantization_bit` trains LoRA on frozen quantised weights (finetuning_type: lora), and the quantised model
is prepared with peft's `prepare_model_for_kbit_training` before training. Thin adapters over transformers/peft.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

from dftune.config.method_args import MethodArguments
from dftune.config.parse import CONFIG_FILE_NAME
from dftune.config.model_args import ModelArguments
from dftune.errors import DftuneError
from dftune.models.integrity import check_local_model, file_problem, looks_like_path

logger = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""A tokenizer is saved as at least one of these (fast, its config, sentencepiece, BPE, WordPiece)."""


def check_attention(attn_implementation: str | None) -> None:
    """Fail before loading when the asked-for kernel cannot run here."""
    if attn_implementation != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise DftuneError(
            "attn_implementation: flash_attention_2 needs the flash-attn package, which is not installed. "
            "Fix: `pip install flash-attn --no-build-isolation` on a CUDA machine, or use attn_implementation: sdpa"
        )
    if not torch.cuda.is_available():
        raise DftuneError("attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa or eager on CPU")


def load_tokenizer(args: ModelArguments) -> PreTrainedTokenizerBase:
    if not args.model_name_or_path:
        raise DftuneError("model_name_or_path is required (a local folder, e.g. from `dftune init-model`)")
    if looks_like_path(args.model_name_or_path) and not Path(args.model_name_or_path).expanduser().exists():
        raise DftuneError(f"model_name_or_path {args.model_name_or_path}: no such folder")  # not a Hub error
    tokenizer = tokenizer_at(args.model_name_or_path, "model_name_or_path", trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_at(path: str, what: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `path` (`what`: the flag it came from); a DftuneError naming the folder and the fix when
    it cannot load, e.g. a checkpoint-N folder whose save has not reached its tokenizer files (they come last)."""
    folder = Path(path).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise DftuneError(f"{what} {path} holds no tokenizer (tokenizer.json, tokenizer_config.json); a checkpoint-N "
                          "folder gets them after its weights, so its save may not have finished: give a complete "
                          "checkpoint (one holding dftune_complete) or the run's output_dir")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise DftuneError(f"cannot load the tokenizer of {what} {path}: {str(err).strip().splitlines()[0]}") from None


def use_end_of_reply_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Stage dllm's tokenizer conventions, in place: a reply ends with the tokenizer's EOS, else its `sep_token`
    (BERT's `[SEP]`: it becomes the EOS, so training, the sampler and the saved tokenizer agree); `pad_token_id` is
    the tokenizer's own, else that token. A tokenizer with neither EOS nor SEP is an error naming it."""
    if tokenizer.eos_token_id is None:
        if tokenizer.sep_token_id is None:
            raise DftuneError(
                f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__} ({type(tokenizer).__name__}) has no "
                "EOS token and no SEP token, so stage dllm cannot mark where a reply ends: add \"eos_token\" (a token "
                "of its vocabulary) to its tokenizer_config.json"
            )
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(args: ModelArguments) -> BitsAndBytesConfig | None:
    """QLoRA's set-up (NF4, double quantisation, bf16 compute and storage, as seed 004), or a DftuneError here,
    before any weights load, when bitsandbytes or CUDA is missing."""
    if args.quantization_bit is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DftuneError(
            f"quantization_bit: {args.quantization_bit} needs the bitsandbytes package, which is not installed. "
            "Fix: `pip install bitsandbytes` on a CUDA machine, or remove quantization_bit"
        )
    if not torch.cuda.is_available():
        raise DftuneError(f"quantization_bit: {args.quantization_bit} needs a CUDA GPU; remove it to train here")
    if args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,  # FSDP shards the packed 4-bit weights as this dtype
    )


def _from_pretrained(auto: type, args: ModelArguments, what: str) -> PreTrainedModel:
    """The one `from_pretrained` that loads weights: the kernel checked, quantised as asked, safetensors only; a
    local folder's weights checked whole first (a truncated file is named, not a raw `SafetensorError`)."""
    check_local_model(args.model_name_or_path, what)
    check_attention(args.attn_implementation)
    quantization = quantization_config(args)
    dtype = args.torch_dtype if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
    try:
        return auto.from_pretrained(
            args.model_name_or_path,
            dtype=dtype,
            attn_implementation=args.attn_implementation,
            trust_remote_code=args.trust_remote_code,
            quantization_config=quantization,
            use_safetensors=True,  # never unpickle weights (docs/reliability.md)
        )
    except (OSError, SafetensorError) as err:
        raise DftuneError(f"cannot load {what} {args.model_name_or_path!r}: {err}") from None


def load_model(args: ModelArguments, *, what: str = "model_name_or_path") -> PreTrainedModel:
    """A causal LM; `what` names the model in errors (the key or flag it came from)."""
    return _from_pretrained(AutoModelForCausalLM, args, what)


def check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, what: str) -> None:
    """The tokenizer's ids all have a row in the model's embedding table; else a DftuneError naming both sizes
    and the fix, before step 1 (past the table, an id is an IndexError on CPU and a device-side assert on CUDA)."""
    rows, size = model.get_input_embeddings().num_embeddings, len(tokenizer)
    if size > rows:
        raise DftuneError(
            f"{what}: the tokenizer has {size} tokens but the model's embedding table has {rows} rows, so ids "
            f"{rows} to {size - 1} have no embedding; use the tokenizer saved with this model, or resize the model to "
            f"it first (model.resize_token_embeddings({size}), then save_pretrained into a new folder)"
        )


def is_diffusion_config(config: PreTrainedConfig) -> bool:
    """A masked LM, a decoder declared bidirectional (`is_causal: false`, e.g. the tiny-dllm preset), or a
    config naming a mask token (LLaDA's `mask_token_id: 126336`)."""
    return (
        type(config) in MODEL_FOR_MASKED_LM_MAPPING
        or config.to_dict().get("is_causal") is False
        or config.to_dict().get("mask_token_id") is not None
    )


def load_diffusion_model(args: ModelArguments) -> PreTrainedModel:
    """AutoModelForMaskedLM where transformers knows the architecture; else the causal-LM class of a
    bidirectional decoder, or (remote code, e.g. LLaDA) whatever `AutoModel` maps it to."""
    try:
        config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise DftuneError(f"cannot load model_name_or_path {args.model_name_or_path!r}: {err}") from None
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return _from_pretrained(AutoModelForMaskedLM, args, "model_name_or_path")
    if not is_diffusion_config(config):
        raise DftuneError(
            f"stage: dllm needs a bidirectional model, and {args.model_name_or_path!r} ({config.model_type}) "
            "is a causal LM: use a masked LM, a LLaDA-style checkpoint (trust_remote_code: true), "
            "`dftune init-model --preset tiny-dllm`, or set is_causal: false in its config"
        )
    auto_map = config.to_dict().get("auto_map") or {}
    auto = AutoModel if "AutoModelForCausalLM" not in auto_map and "AutoModel" in auto_map else AutoModelForCausalLM
    return _from_pretrained(auto, args, "model_name_or_path")


def resolve_mask_token_id(
    explicit: int | None, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> int:
    """The `mask_token_id` key, else the model config's `mask_token_id`, else the tokenizer's mask token."""
    for value in (explicit, config.to_dict().get("mask_token_id"), tokenizer.mask_token_id):
        if value is not None:
            return int(value)
    raise DftuneError(
        "stage: dllm needs a mask token: the model config and the tokenizer name none; set mask_token_id "
        "(LLaDA's is 126336)"
    )


def load_trainable_model(
    args: ModelArguments, method: MethodArguments, *, gradient_checkpointing: bool, diffusion: bool = False
) -> PreTrainedModel:
    """The model a stage trains (causal, or masked/diffusion), under the quantisation rules of every stage."""
    if args.quantization_bit is not None and method.finetuning_type != "lora":
        raise DftuneError(f"quantization_bit: {args.quantization_bit} trains LoRA on frozen quantised "
                          "weights: set finetuning_type: lora")
    model = load_diffusion_model(args) if diffusion else load_model(args)
    if args.quantization_bit is not None:
        # Seed 004's QLoRA set-up: frozen base, norms in fp32, embeddings' outputs requiring grad.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def lora_config(method: MethodArguments, *, causal: bool = True) -> LoraConfig:
    """LoRA on `lora_target` modules; 'all' means every linear layer but the output head (peft's all-linear).
    `causal`: peft's causal-LM wrapper (generation); a masked LM gets the plain one, which has no generate."""
    targets: str | list[str] = "all-linear" if method.lora_target == ["all"] else method.lora_target
    return LoraConfig(
        r=method.lora_rank,
        lora_alpha=method.lora_alpha if method.lora_alpha is not None else 2 * method.lora_rank,
        lora_dropout=method.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM" if causal else None,
    )


def apply_lora(model: PreTrainedModel, method: MethodArguments) -> PreTrainedModel:
    config = lora_config(method, causal=hasattr(model, "prepare_inputs_for_generation"))
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise DftuneError(f"lora_target {method.lora_target}: {err}") from None
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d on %s: %d of %d parameters trainable", method.lora_rank, config.target_modules, trainable,
                total)
    return model


def load_adapter(model: PreTrainedModel, path: str, *, trainable: bool = False) -> PeftModel:
    """`model` with the saved LoRA adapter in `path` applied. peft reads `adapter_model.safetensors` (dftune saves
    no other kind); an older `.bin` only through `torch.load(weights_only=True)`, which runs no code."""
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise DftuneError(f"{path} holds no LoRA adapter (no adapter_config.json): give a LoRA run's output_dir")
    for weights in sorted(folder.glob("adapter_model*.safetensors")):
        problem = file_problem(weights)
        if problem:
            raise DftuneError(f"adapter {weights} {problem}; copy or save the adapter again")
    try:
        adapted = PeftModel.from_pretrained(model, path, is_trainable=trainable)
    except (OSError, SafetensorError) as err:
        raise DftuneError(f"cannot load the adapter in {path}: {err}") from None
    if (block_size := trained_block_size(folder)) is not None:
        model.config.diffusion_block_size = block_size  # decode the blocks the adapter was trained on
    return adapted


def trained_block_size(folder: Path) -> int | None:
    """The `diffusion_block_size` of the run that saved the adapter in `folder` (its dftune_config.yaml): peft saves
    no model config, so a LoRA block-diffusion run's blocks are known only from there."""
    saved = folder / CONFIG_FILE_NAME
    if not saved.is_file():
        return None
    try:
        keys = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DftuneError(f"cannot read {saved} ({err}); train the adapter again or delete the file") from None
    value = keys.get("diffusion_block_size") if isinstance(keys, dict) else None
    return None if value is None else int(value)
