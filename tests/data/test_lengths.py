"""Long conversations: split at turn boundaries (each sample ends with a reply, as much context as fits), a prompt
longer than the budget cut from the left, the old truncation as an option, counts in the report, bounded memory."""

from __future__ import annotations

import json
import random
import sys
import textwrap

import processes
import pytest

from dftune.config.data_args import DataArguments
from dftune.data.prepare import prepare_datasets
from dftune.data.encode import IGNORE_INDEX, encode_turns
from dftune.data.lengths import fit

from .conftest import write_jsonl


def conversation(*lengths: int, seed: int = 0) -> list[dict]:
    """user/assistant turns of the given content lengths (characters; the byte-level tokenizer: one token each)."""
    rng = random.Random(seed)
    roles = ["user", "assistant"] * len(lengths)
    return [{"role": role, "content": "".join(rng.choice("abcdefgh ") for _ in range(n))}
            for role, n in zip(roles, lengths)]  # fmt: skip


def test_split_keeps_every_reply_once_at_turn_boundaries(tokenizer):
    """Exchanges of ~110 tokens (60 + 30 characters and the template) at max_length 120: one sample each."""
    turns = encode_turns(tokenizer, conversation(60, 30, 60, 30, 60, 30), mask_history=False)
    pieces = fit(turns, 120)
    assert len(pieces.samples) == 3 and pieces.tokens_cut == 0
    labelled = sum(label != IGNORE_INDEX for label in turns.labels)
    assert sum(sum(label != IGNORE_INDEX for label in labels) for _, labels in pieces.samples) == labelled
    for ids, labels in pieces.samples:
        assert len(ids) <= 120 and labels[0] == IGNORE_INDEX
        assert labels[-1] != IGNORE_INDEX  # ends with a reply's end-of-turn token
        assert tokenizer.decode(ids).startswith("<|im_start|>user")  # starts at a turn boundary
        assert tokenizer.decode(ids[-1:]) == "<|im_end|>"


def test_context_that_fits_is_kept_and_earlier_replies_are_not_trained_twice(tokenizer):
    turns = encode_turns(tokenizer, conversation(10, 10, 10, 10, 60, 10), mask_history=False)
    budget = turns.replies[2][1] - turns.boundaries[1]  # exchanges 2 and 3 fit together, 1 to 3 do not
    pieces = fit(turns, budget)
    (ids1, labels1), (ids2, labels2) = pieces.samples
    assert ids1 == turns.input_ids[: turns.replies[1][1]]
    # The second sample keeps the second exchange as context (it fits) but does not train on its reply again.
    assert tokenizer.decode(ids2).count("<|im_start|>assistant") == 2
    assert sum(label != IGNORE_INDEX for label in labels2) == turns.replies[2][1] - turns.replies[2][0]


def test_long_prompt_is_cut_from_the_left_and_a_long_reply_keeps_its_share(tokenizer):
    short_reply = encode_turns(tokenizer, conversation(500, 20), mask_history=False)
    [(ids, labels)] = fit(short_reply, 128).samples
    first, end = short_reply.replies[0]
    assert len(ids) == 128 and ids[-(end - first):] == short_reply.input_ids[first:end]  # the whole reply
    long_reply = encode_turns(tokenizer, conversation(500, 500), mask_history=False)
    [(ids, labels)] = fit(long_reply, 128, reply_share=0.25).samples
    assert sum(label != IGNORE_INDEX for label in labels) == 128 - 96  # the prompt gets the other 75%


def test_truncate_is_the_old_behaviour(tokenizer):
    turns = encode_turns(tokenizer, conversation(500, 20), mask_history=False)
    [(ids, labels)] = fit(turns, 128, mode="truncate").samples
    assert ids == turns.input_ids[:128] and all(label == IGNORE_INDEX for label in labels)


def test_long_corpus_keeps_every_record_and_reports_the_counts(tmp_path, tokenizer):
    """Conversations of 2k-15k tokens, some first prompts over the budget, at max_length 2048."""
    rng = random.Random(0)
    records = []
    for i in range(24):
        total = rng.randint(2000, 15000)
        first_prompt = 2500 if i % 4 == 0 else rng.randint(50, 600)
        lengths = [first_prompt]
        while sum(lengths) < total:
            lengths.append(rng.randint(100, 1500))
        lengths += [rng.randint(50, 400)] if len(lengths) % 2 else []
        records.append({"messages": conversation(*lengths, seed=i)})
    data = write_jsonl(tmp_path / "long.jsonl", records)
    args = DataArguments(data_files=[str(data)], max_length=2048, dataset_cache_dir=str(tmp_path / "cache"))
    prepared = prepare_datasets(args, tokenizer, seed=0)
    report = prepared.report.to_dict()
    assert report["kept"] == report["total"] == 24
    counts = report["lengths"]["long"]
    assert counts["over_length"] == 24 and counts["split"] == 24 and counts["samples"] == len(prepared.train)
    assert counts["tokens_cut"] > 0  # the 2500-character first prompts were cut from the left
    assert max(len(ids) for ids in prepared.train["input_ids"]) <= 2048
    old = prepare_datasets(DataArguments(data_files=[str(data)], max_length=2048, long_conversations="truncate",
                                         on_bad_record="skip", dataset_cache_dir=str(tmp_path / "cache")),
                           tokenizer, seed=0)  # fmt: skip
    # The old way: the six records whose first prompt exceeds the budget are lost, the rest keep one sample each.
    assert old.report.rejected == 6 and len(old.train) == 18
    assert {e.reason for e in old.report.errors} == {"no assistant token within max_length"}


@pytest.mark.slow
def test_a_50_mb_reply_takes_bounded_memory(tmp_path):
    """Peak RSS (VmHWM) of validating and tokenising one 50 MB reply at max_length 64, in a fresh process, over what
    the imports alone take: at most 10x the record (measured: see benchmarks/bench_preprocess.py --long)."""
    data = tmp_path / "big.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "y" * (50 << 20)}]
    data.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    del messages
    code = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from dftune.data.validate import validate_and_encode
        from dftune.models.presets import build_tokenizer

        def peak_kib():  # VmHWM: ru_maxrss would carry the parent's peak across fork and exec
            status = Path("/proc/self/status").read_text().splitlines()
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

        tokenizer = build_tokenizer()
        base = peak_kib()
        dataset, report = validate_and_encode([{str(data)!r}], tokenizer, max_length=64)
        peak = peak_kib()
        print(json.dumps({{"base": base, "peak": peak, "rows": len(dataset), "kept": report.kept}}))
    """)
    result = processes.run([sys.executable, "-c", code], step="validate_and_encode of one long record", timeout=120,
                           capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["rows"] == 1 and measured["kept"] == 1
    assert (measured["peak"] - measured["base"]) * 1024 < 10 * (50 << 20)  # KiB
