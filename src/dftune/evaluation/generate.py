"""Greedy, batched generation of the last assistant turn, and exact-match accuracy against the reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dftune.errors import DftuneError
from dftune.evaluation.extract import EXTRACTORS
from dftune.evaluation.report import EvalReport, RecordResult

Messages = list[dict[str, str]]


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    temperature: float = 0.0,
    min_new_tokens: int = 0,
) -> list[str]:
    """The model's reply to each conversation prefix (left-padded batches, special tokens stripped): greedy, or
    sampled at `temperature` when it is above 0; no EOS in the first `min_new_tokens` (HF generate's key)."""
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    replies: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", leave=False):
            texts = [
                tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return replies


def evaluate_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    *,
    extractor: str = "exact",
    replies_of: Callable[[list[Messages]], list[str]] | None = None,
    **kwargs: float,
) -> EvalReport:
    """Greedy replies to each conversation's turns before its last (the reference assistant turn), scored by
    comparing `extractor(reply)` with `extractor(reference)`. `replies_of(prefixes)` writes the replies (e.g. a
    diffusion LM's sampler); by default `generate_replies(model, tokenizer, prefixes, **kwargs)`."""
    if extractor not in EXTRACTORS:
        raise DftuneError(f"unknown extractor {extractor!r}; choose one of: {', '.join(EXTRACTORS)}")
    extract = EXTRACTORS[extractor]
    for i, messages in enumerate(conversations):
        if messages[-1]["role"] != "assistant":
            raise DftuneError(f"record {i}: the last message must be the reference assistant reply")
    prefixes = [list(m[:-1]) for m in conversations]
    replies = replies_of(prefixes) if replies_of is not None else generate_replies(model, tokenizer, prefixes, **kwargs)
    results = []
    for i, (messages, reply) in enumerate(zip(conversations, replies)):
        reference, extracted = messages[-1]["content"], extract(reply)
        prompt = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "user"), "")
        correct = bool(extracted) and extracted == extract(reference)
        results.append(RecordResult(i, prompt, reference, reply, extracted, correct))
    return EvalReport(results)


def exact_match_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], **kwargs: int
) -> float:
    """Share of ChatML records whose last assistant turn the model reproduces exactly from the turns before it."""
    return evaluate_records(model, tokenizer, [r["messages"] for r in records], **kwargs).accuracy
