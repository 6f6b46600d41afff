"""Pictures of runs: training curves from the Trainer's log history."""
