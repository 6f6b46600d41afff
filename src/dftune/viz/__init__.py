"""Pictures of runs: training curves from the Trainer's log history, held-out accuracy as bars."""
