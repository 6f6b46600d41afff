"""SIGINT/SIGTERM during training: finish the current optimizer step, save a complete checkpoint, stop.

Preemption (SLURM, Kubernetes, spot instances) sends SIGTERM and waits a grace period before SIGKILL; Ctrl-C sends
SIGINT. The handler only sets a flag: the Trainer saves at the next step boundary, where model, optimizer,
scheduler, RNG and data position agree. A second signal gets the default behaviour (for when waiting is not wanted).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SaveOnSignal(TrainerCallback):
    """On SIGINT/SIGTERM: `should_save` and `should_training_stop` at the end of the current step."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.stopped = False  # True once training stopped for a signal (here or, in DDP, on another process)
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)
        logger.warning("%s received: saving a checkpoint at the end of this step, then stopping "
                       "(send it again to stop at once)", self.received.name)
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.received is not None
        if dist.is_available() and dist.is_initialized():  # every process must save and stop at the same step
            flag = torch.tensor([float(stop)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()
