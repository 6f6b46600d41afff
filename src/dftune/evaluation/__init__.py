"""Generation-based evaluation of held-out conversations."""

from dftune.evaluation.generate import exact_match_accuracy, generate_replies

__all__ = ["exact_match_accuracy", "generate_replies"]
