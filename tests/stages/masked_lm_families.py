"""Tiny masked LMs of several families, each with a tokenizer built offline (`tokenizers`) in its family's own
conventions: BERT-style WordPiece with [CLS]/[SEP]/[PAD]/[MASK] and no EOS, RoBERTa's byte-level BPE with
<s>/</s>/<pad>/<mask>, XLM-RoBERTa's and ALBERT's SentencePiece-style Unigram, ModernBERT's byte-level BPE with
BERT's special tokens. No chat template, as the released checkpoints ship none."""

from __future__ import annotations

from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForMaskedLM

CORPUS = ["user: copy abcd", "assistant: abcd", "system: you copy words", "copy dcba bacd cabd"] * 4 + [
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:!?0123456789"
]
BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"}  # fmt: skip
ROBERTA_SPECIALS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                    "sep_token": "</s>", "cls_token": "<s>", "mask_token": "<mask>"}  # fmt: skip
ALBERT_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "mask_token": "[MASK]"}  # fmt: skip
LAYERS = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=160)  # fmt: skip


def wordpiece(specials: dict[str, str]) -> Tokenizer:
    """BERT's WordPiece: lower-casing normaliser, split on whitespace and punctuation, ## continuations."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokens = list(dict.fromkeys(specials.values()))
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=120, special_tokens=tokens))
    return tokenizer


def byte_bpe(specials: dict[str, str]) -> Tokenizer:
    """GPT-2's byte-level BPE (RoBERTa, ModernBERT): every byte is a token, spaces are part of the next word."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokens = list(dict.fromkeys(specials.values()))
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=tokens,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


def unigram(specials: dict[str, str]) -> Tokenizer:
    """SentencePiece's Unigram with the ▁ word marker (XLM-RoBERTa, ALBERT)."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokens = list(dict.fromkeys(specials.values()))
    tokenizer.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=120, special_tokens=tokens,
                                                                  unk_token=specials["unk_token"]))
    return tokenizer


# model_type: (tokenizer class, tokenizer model, special tokens, config keys besides the vocabulary)
FAMILIES = {
    "bert": ("BertTokenizerFast", wordpiece, BERT_SPECIALS, LAYERS),
    "distilbert": ("DistilBertTokenizerFast", wordpiece, BERT_SPECIALS,
                   dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=160)),
    "electra": ("ElectraTokenizerFast", wordpiece, BERT_SPECIALS, dict(LAYERS, embedding_size=16)),
    "roberta": ("RobertaTokenizerFast", byte_bpe, ROBERTA_SPECIALS, dict(LAYERS, max_position_embeddings=162)),
    "xlm-roberta": ("XLMRobertaTokenizerFast", unigram, ROBERTA_SPECIALS, dict(LAYERS, max_position_embeddings=162)),
    "albert": ("AlbertTokenizerFast", unigram, ALBERT_SPECIALS, dict(LAYERS, embedding_size=16)),
    "modernbert": ("PreTrainedTokenizerFast", byte_bpe, BERT_SPECIALS,
                   dict(LAYERS, global_attn_every_n_layers=1, local_attention=16)),
}


def build_masked_lm(model_type: str, folder: Path) -> Path:
    """A 1-layer masked LM of `model_type` and its own tokenizer, saved in `folder`."""
    class_name, build, specials, keys = FAMILIES[model_type]
    tokenizer = getattr(transformers, class_name)(tokenizer_object=build(specials), **specials)
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in specials.items()
           if name in ("pad_token", "cls_token", "sep_token")}  # fmt: skip
    # BERT-style configs name no EOS of their own; ModernBERT's defaults name ids of its 50k vocabulary
    ids |= {"bos_token_id": ids.get("cls_token_id"), "eos_token_id": ids.get("sep_token_id")}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **keys, **ids)
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
