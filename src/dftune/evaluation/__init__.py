"""Generation-based evaluation of held-out conversations."""

from dftune.evaluation.extract import EXTRACTORS
from dftune.evaluation.generate import evaluate_records, exact_match_accuracy, generate_replies
from dftune.evaluation.report import EvalReport, RecordResult, wilson_interval

__all__ = [
    "EXTRACTORS",
    "EvalReport",
    "RecordResult",
    "evaluate_records",
    "exact_match_accuracy",
    "generate_replies",
    "wilson_interval",
]
