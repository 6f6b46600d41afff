"""The objective keys of a run, made from the objective registry: one place declares them (`losses.objectives`).

`ObjectiveArguments` has one field per `Setting` of every registered objective (`dft_alpha`, `bft_group_size`,
...: typed, with the setting's help; a key that selects its objective defaults to None, meaning "not given",
the others to the environment's value or the declared default) and one boolean per alias (`use_dft_loss`).
`MethodArguments` inherits it, so a run reads `config.method.dft_alpha` as a plain field; its class attribute
`ranges` holds each setting's declared range, which `dftune.config.number_keys` checks at parse time (the keys of
objectives not chosen too: a typo is a typo).
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any, Literal

from dftune.losses import OBJECTIVES, Objective, Setting

LossName = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]
"""The registered objectives, as the choices of the `loss` key."""


def _setting_field(setting: Setting) -> tuple[str, Any, Any]:
    kind = setting.type | None if setting.selects else setting.type
    metadata = {"help": setting.help} | ({"choices": list(setting.choices)} if setting.choices else {})
    return setting.key, kind, field(default_factory=setting.config_default, metadata=metadata)


def _alias_field(objective: Objective) -> tuple[str, Any, Any]:
    help_text = f"LLaMA-Factory alias for loss: {objective.name}."
    return str(objective.alias), bool, field(default=False, metadata={"help": help_text})


ObjectiveArguments = make_dataclass(
    "ObjectiveArguments",
    [_setting_field(s) for o in OBJECTIVES.values() for s in o.settings]
    + [_alias_field(o) for o in OBJECTIVES.values() if o.alias],
    namespace={"ranges": {s.key: s.range for o in OBJECTIVES.values() for s in o.settings if s.choices is None}},
)


def given_for(method: Any, objective: Objective) -> list[str]:
    """The keys given in `method` that select `objective`: its alias set true, its selecting settings set."""
    given = [s.key for s in objective.settings if s.selects and getattr(method, s.key) is not None]
    return ([objective.alias] if objective.alias and getattr(method, objective.alias) else []) + given


def resolve_loss(method: Any) -> str:
    """One objective from `loss` and the keys that select one, rejecting combinations that contradict.

    When several objectives are selected by their keys, the one registered last wins (the seeds' hook order:
    `use_bft_loss` over `use_dft_loss`); a setting of an objective other than the resolved one is an error.
    """
    selected = [name for name, objective in OBJECTIVES.items() if given_for(method, objective)]
    implied = selected[-1] if selected else None
    if method.loss is not None and implied is not None and implied != method.loss:
        keys = " / ".join(given_for(method, OBJECTIVES[implied]))
        raise ValueError(f"loss: {method.loss} contradicts the keys that select {implied} ({keys}): keep one")
    loss = method.loss or implied or "sft"
    for name, objective in OBJECTIVES.items():
        stray = [s.key for s in objective.settings if s.selects and getattr(method, s.key) is not None]
        if name != loss and stray:
            raise ValueError(f"{', '.join(stray)} applies to loss: {name} only, but the loss is {loss}")
    return loss


def objective_settings(method: Any) -> dict[str, Any]:
    """The chosen objective's keyword arguments (`alpha`, `group_size`, ...), defaults filled in."""
    objective = OBJECTIVES[method.loss]
    values = {s.kwarg: getattr(method, s.key) for s in objective.settings}
    return {s.kwarg: s.default if values[s.kwarg] is None else values[s.kwarg] for s in objective.settings}


def selecting_keys_cleared(method: Any, loss: str) -> dict[str, Any]:
    """The values that switch `method` to `loss`: every other objective's selecting keys unset (`dftune compare`)."""
    cleared: dict[str, Any] = {}
    for name, objective in OBJECTIVES.items():
        if name == loss:
            continue
        cleared |= {s.key: None for s in objective.settings if s.selects}
        cleared |= {objective.alias: False} if objective.alias else {}
    return cleared
