"""dftune's lm-evaluation-harness backend: `lm_eval --model dftune` and `dftune eval --lm_eval_tasks`.

Light on import (no torch, no lm_eval): the `dftune` parsers import this package. The backend classes are
`dftune.harness.backend` (needs the `lmeval` extra), the model loading every evaluation shares is
`dftune.harness.loaded`, running lm-eval from dftune is `dftune.harness.run`.
"""

LMEVAL_INSTALL = "pip install -e '.[lmeval]'"
"""How to get lm-eval: the optional extra pinned in constraints.txt (`-c constraints.txt` keeps its versions)."""

__all__ = ["LMEVAL_INSTALL"]
