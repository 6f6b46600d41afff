"""Trackers (`report_to`) that work offline by default: tensorboard as transformers ships it, wandb in offline mode
unless the user chose a mode or has an API key, swanlab through its own callback in offline mode.

Metric names: the Trainer's integrations prefix every training key with `train/` and turn `eval_x` into `eval/x`;
ObjectiveTrainer logs plain keys (`avg_p_correct`, `ce`), so trackers show `train/avg_p_correct`, never
`train/train/avg_p_correct`.
"""

from __future__ import annotations

import logging
import netrc
import os

from transformers import TrainerCallback, TrainingArguments

from dftune.errors import DftuneError

logger = logging.getLogger(__name__)


def has_wandb_key() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def tracker_callbacks(args: TrainingArguments) -> list[TrainerCallback]:
    """Prepare `args.report_to` before the Trainer reads it; return the callbacks to add for it.

    - several trackers: `report_to: tensorboard,wandb` or a YAML list (the config layer splits them).
    - wandb: WANDB_MODE=offline when the user has set no WANDB_MODE and has no API key (`wandb sync` later).
    - swanlab: transformers' own integration fails here with "No active Run"; it is taken out of report_to and
      swanlab's SwanLabCallback is returned instead, in offline mode unless SWANLAB_MODE or an API key says
      otherwise, logging under `output_dir/swanlog`.
    """
    callbacks: list[TrainerCallback] = []
    if "wandb" in args.report_to and "WANDB_MODE" not in os.environ and not has_wandb_key():
        os.environ["WANDB_MODE"] = "offline"
        logger.info("report_to wandb: no WANDB_MODE and no API key, so WANDB_MODE=offline (`wandb sync` uploads)")
    if "swanlab" in args.report_to:
        args.report_to = [name for name in args.report_to if name != "swanlab"]
        try:
            import swanlab
            from swanlab.integration.transformers import SwanLabCallback
        except ImportError:
            raise DftuneError("report_to swanlab needs swanlab: pip install 'dftune[tracking]'") from None
        if swanlab.has_run():  # a previous run in this process (dftune compare): the callback would log into it
            swanlab.finish()
        mode = None if ("SWANLAB_MODE" in os.environ or os.environ.get("SWANLAB_API_KEY")) else "offline"
        callbacks.append(
            SwanLabCallback(
                project=os.environ.get("SWANLAB_PROJ_NAME", "dftune"),
                experiment_name=args.run_name,
                log_dir=os.path.join(args.output_dir, "swanlog"),
                mode=mode,
            )
        )
        logger.info("report_to swanlab: swanlab's own callback, mode %s", mode or "from the environment")
    return callbacks
