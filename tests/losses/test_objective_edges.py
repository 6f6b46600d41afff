"""The edges of the objectives that `make mutate` found untested (docs/testing.md lists the mutants they kill):
the public functions' defaults and arguments, a batch of one target token, ratios exactly on PSFT's clips, a
confidence rounded above 1, and what a schedule passes on."""

from __future__ import annotations

import inspect

import pytest
import torch

import dftune.losses as losses
import loss_reference as ref
from dftune.losses import OBJECTIVES, SEGMENTS, compute_objective, lowest_group_confidence, psft_loss, sft_loss
from dftune.losses.contract import REFRESH_STEPS
from dftune.losses.registry import BUILT_IN
from test_losses_objectives import assert_same_loss_and_grad


def public_loss(name: str):
    """`<name>_loss`, the function a user calls for objective `name`."""
    return getattr(losses, f"{name}_loss")


@pytest.mark.parametrize("name", BUILT_IN)
def test_public_loss_functions_compute_the_registry_defaults(name):
    """`<name>_loss(logits, labels)` without a setting computes what a config that leaves the key out trains, on a
    batch where every default matters: samples of 299 targets (past BFT's window of 256), V = 31 (past EAFT's
    top 20), and a reference whose target logits are lowered by 0 to 6 (PSFT ratios across its clip of 1.28,
    iw-SFT sample weights past their cap of 16)."""
    logits, labels = ref.make_batch(2, 300, 31, seed=12, empty_row=None)
    labels[:, :] = torch.randint(0, 31, labels.shape, generator=torch.Generator().manual_seed(13))
    other = logits.detach().clone()
    shift = torch.rand(2, 299, generator=torch.Generator().manual_seed(14), dtype=torch.float64) * 6.0
    other[:, :-1].scatter_add_(2, labels[:, 1:, None], -shift[..., None])  # position t predicts label t + 1
    reference = (other,) if OBJECTIVES[name].needs_reference else ()
    out = public_loss(name)(logits, labels, *reference)
    expected = compute_objective(name, logits, labels, **({"ref_logits": other} if reference else {}))
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-14, atol=0)
    signature = inspect.signature(public_loss(name)).parameters  # and the defaults a reader sees are those
    for setting in OBJECTIVES[name].settings:
        if not setting.scheduling:  # a schedule is the trainer's, not a loss argument
            assert signature[setting.kwarg].default == setting.default, setting.key


@pytest.mark.parametrize("name", [name for name in BUILT_IN if SEGMENTS in OBJECTIVES[name].needs])
def test_public_loss_function_passes_sample_ids_on(name):
    """Two rows packed with two samples each: the public function weighs the four samples `sample_ids` names."""
    logits, labels = ref.make_batch(2, 12, 9, seed=4, empty_row=None)
    sample_ids = torch.tensor([[0] * 5 + [1] * 7, [2] * 8 + [3] * 4])
    labels[0, 5] = labels[1, 8] = -100  # a sample's first label is never a target
    reference_inputs, _ = ref.reference_model(name, logits, 9)
    out = public_loss(name)(logits, labels, *reference_inputs.values(), sample_ids=sample_ids)
    expected = compute_objective(name, logits, labels, sample_ids=sample_ids, **reference_inputs)
    assert out.num_samples == expected.num_samples == 4
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-14, atol=0)


ONE_TARGET = {  # objective -> (its public function, its loop reference), other model's logits as a third input
    "asft": (lambda x, y, other: losses.asft_loss(x, y, other), lambda x, y, other: ref.asft(x, y, other)),
    "bft": (lambda x, y, other: losses.bft_loss(x, y, group_size=2), lambda x, y, other: ref.bft(x, y, 2)),
    "deft": (lambda x, y, other: losses.deft_loss(x, y), lambda x, y, other: ref.deft(x, y)),
    "iw_sft": (lambda x, y, other: losses.iw_sft_loss(x, y, other), lambda x, y, other: ref.iw_sft(x, y, other)),
    "psft": (lambda x, y, other: losses.psft_loss(x, y, other), lambda x, y, other: ref.psft(x, y, other)),
}


@pytest.mark.parametrize("name", sorted(ONE_TARGET))
def test_a_batch_of_one_target_token(name):
    """One target in the whole batch (and a row with none): every mean is over that one target, every per-sample
    count is 1, and the sample that holds it is the one that has a target."""
    logits, labels = ref.make_batch(2, 6, 7, seed=8, empty_row=1)
    labels[0] = -100
    labels[0, 3] = 4
    other = ref.make_batch(2, 6, 7, seed=9)[0].detach()
    function, reference = ONE_TARGET[name]
    assert_same_loss_and_grad(lambda x, y: function(x, y, other), lambda x, y: reference(x, y, other), logits, labels)


def test_psft_ratios_exactly_on_the_clips():
    """p_old = p makes every ratio exactly 1; with eps_low = eps_high = 0 it lies on both clips: the gradient is
    kept (r <= 1 + eps_high, so PSFT is SFT) and neither clip counts it (r > 1 + eps_high, r < 1 - eps_low)."""
    logits, labels = ref.make_batch(3, 17, 29)
    out = psft_loss(logits, labels, logits.detach(), eps_low=0.0, eps_high=0.0)
    torch.testing.assert_close(out.loss, sft_loss(logits, labels).loss, rtol=1e-14, atol=0)
    assert float(out.metrics["psft_clipped_high"]) == float(out.metrics["psft_clipped_low"]) == 0.0


def test_psft_schedule_passes_the_clips_on_and_keeps_the_refresh():
    """The refresh interval is the trainer's: the loss gets the clip settings only, at any step."""
    kwargs = {"eps_low": 0.1, "eps_high": 0.3, REFRESH_STEPS: 4}
    assert OBJECTIVES["psft"].kwargs_at(kwargs, 5) == {"eps_low": 0.1, "eps_high": 0.3}


def test_bft_confidence_rounded_above_one_is_one():
    """A target's CE can round a hair below 0 (log p > 0): its confidence is 1, so its weight 1 - p_conf is 0, not
    negative."""
    ce = torch.tensor([-1e-9, -2e-9], dtype=torch.float64)
    p_conf = lowest_group_confidence(ce, torch.tensor([0, 0]), 1, 1)
    assert p_conf.tolist() == [1.0]
