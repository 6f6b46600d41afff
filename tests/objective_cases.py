"""Test cases drawn from the objective registry: every registered objective with its default settings, and with
every loss setting moved off its default. Tests parametrised by these cover an objective by its registration."""

from __future__ import annotations

import pytest

from dftune.losses import OBJECTIVES, Setting


def varied(setting: Setting):
    """A valid value other than the default: another choice, 70% into a closed range, else one step up."""
    if setting.choices is not None:
        return next(choice for choice in setting.choices if choice != setting.default)
    if setting.low is not None and setting.high is not None:
        return setting.type(setting.low + 0.7 * (setting.high - setting.low))
    return setting.type(max(setting.default + 1, 2 if setting.type is int else setting.default + 1))


def cases(stage: str | None = None) -> list:
    """pytest params (name, settings by keyword) of every registered objective (for `stage`, when given)."""
    params = []
    for name, objective in sorted(OBJECTIVES.items()):
        if stage is not None and stage not in objective.stages:
            continue
        params.append(pytest.param(name, {}, id=f"{name}-default"))
        loss_settings = [s for s in objective.settings if not s.scheduling]  # a schedule is the trainer's
        if loss_settings:
            params.append(pytest.param(name, {s.kwarg: varied(s) for s in loss_settings}, id=f"{name}-varied"))
    return params
