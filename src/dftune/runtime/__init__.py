"""The runtime every stage shares, and that imports no stage: the Trainer with a dftune objective, its fused head
and metric windows, reliability (guards, checkpoints, signals), trackers, the run header, parallelism checks and
the preflight checks.

Module order: objective_trainer > reference_forward > fused_head; objective_trainer > guards, metrics;
guards > checkpoints; header, parallelism, preflight, signals, tracking stand alone (preflight reads
`dftune.models` and `dftune.data`).
"""
