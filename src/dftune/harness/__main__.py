"""`python -m dftune.harness ARGS`: lm-eval's own command line (`lm_eval ARGS`) with the name `dftune` registered.

lm-eval releases that read the `lm_eval.models` entry point need none of this (`lm_eval --model dftune ...`);
0.4.13, the one constraints.txt pins, reads none, so this runs its CLI after importing the backend.
"""

from __future__ import annotations

import sys

from dftune.errors import DftuneError
from dftune.harness.run import require_lm_eval


def main() -> None:
    try:
        require_lm_eval("python -m dftune.harness")
        import dftune.harness.backend  # noqa: F401  registers `dftune`
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
    except DftuneError as err:  # one line, no traceback, as the dftune command prints it
        sys.exit(f"dftune: error: {err}")


if __name__ == "__main__":
    main()
