"""Batching: padded layout, packed layout, and packed == padded (loss and gradients) on a real tiny Llama."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from dftune.data.collate import DataCollatorForChat
from dftune.data.collate import pack_rows, configure_packing
from dftune.errors import DftuneError
from dftune.models.presets import init_model

FEATURES = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    {"input_ids": [8, 9], "labels": [8, 9]},
]


def test_padding_to_the_longest():
    batch = DataCollatorForChat(pad_token_id=0)(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, 9, -100]]


def test_packing_restarts_positions_and_masks_boundaries():
    """Lengths 3 and 2: capacity 3, so two rows; the short row's pad tail continues its positions."""
    batch = DataCollatorForChat(pad_token_id=0, packing=True)(FEATURES)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]


def test_packing_shares_rows_without_crossing_samples():
    features = [{"input_ids": [1] * n, "labels": [1] * n} for n in (4, 1, 2, 3, 2)]
    batch = DataCollatorForChat(pad_token_id=0, packing=True)(features)
    assert batch["input_ids"].shape == (3, 4)  # 12 tokens in rows of at most 4 (the longest sample)
    starts = batch["position_ids"].eq(0)
    assert starts.sum() == len(features)  # every sample starts once; pad tails start nothing
    assert batch["labels"][starts].eq(-100).all()  # no token is trained to predict across a boundary
    assert batch["labels"].ne(-100).sum() == sum(n - 1 for n in (4, 1, 2, 3, 2))


@pytest.mark.parametrize("lengths", [[5], [3, 3, 3], [1, 7, 2, 6, 3, 5, 4], [2] * 9])
def test_pack_rows_fits_every_sample_once_within_capacity(lengths):
    rows = pack_rows(lengths)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max(lengths) for row in rows)
    assert len(rows) <= len(lengths)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model("tiny-llama", tmp_path_factory.mktemp("tiny"))


def summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain shifted token cross-entropy, summed: position t predicts labels[t + 1]."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )


@pytest.mark.parametrize(
    ("attn", "tolerance"),
    # eager computes its softmax in float32 even for a float64 model, hence its looser bound.
    [("sdpa", 1e-10), ("eager", 1e-6)],
)
def test_packed_equals_padded(model_dir, attn, tolerance):
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=torch.float64)
    configure_packing(model.config)
    model.train()
    generator = torch.Generator().manual_seed(0)
    features = []
    for length in (7, 19, 4, 11):  # awkward lengths, ignored tokens inside each sample
        ids = torch.randint(0, 256, (length,), generator=generator).tolist()
        features.append({"input_ids": ids, "labels": [t if i % 3 else -100 for i, t in enumerate(ids)]})

    results = []
    for packing in (False, True):
        batch = DataCollatorForChat(pad_token_id=0, packing=packing)(features)
        labels = batch.pop("labels")
        model.zero_grad()
        loss = summed_ce(model(**batch).logits, labels)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results
    torch.testing.assert_close(packed_loss, padded_loss, rtol=tolerance, atol=0)
    for packed, padded in zip(packed_grads, padded_grads):
        torch.testing.assert_close(packed, padded, rtol=tolerance, atol=tolerance * padded.abs().max().item())


def test_configure_packing_disables_the_cache_and_refuses_unknown_attention(model_dir):
    config = AutoConfig.from_pretrained(model_dir, attn_implementation="sdpa")
    assert config.use_cache
    configure_packing(config)
    assert not config.use_cache
    config._attn_implementation = "some_kernel"
    with pytest.raises(DftuneError, match="packing: true needs"):
        configure_packing(config)


@pytest.mark.parametrize("packing", [False, True])
def test_ref_logps_are_placed_as_the_labels(packing):
    """A per-label float column (precompute_ref_log_probs) lands on its labels: value = the label where one is
    trained, NaN wherever the labels are -100 (padding, packing boundaries, prompts)."""
    generator = torch.Generator().manual_seed(0)
    features = []
    for n in (7, 3, 9, 5, 2, 6):
        labels = [int(t) if keep else -100 for t, keep in zip(torch.randint(0, 50, (n,), generator=generator),
                                                              torch.rand(n, generator=generator) < 0.7)]
        labels[0] = 7  # a first label that packing must drop from both columns
        ref = [float(t) if t != -100 else float("nan") for t in labels]
        features.append({"input_ids": list(range(1, n + 1)), "labels": labels, "ref_logps": ref})
    batch = DataCollatorForChat(pad_token_id=0, packing=packing)(features)
    labels, ref = batch["labels"], batch["ref_logps"]
    assert ref.dtype == torch.float64 and ref.shape == labels.shape
    assert torch.equal(ref.isnan(), labels == -100)
    assert torch.equal(ref[labels != -100], labels[labels != -100].double())
