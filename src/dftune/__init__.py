"""dftune: fine-tune language models with differentiated objectives."""

__version__ = "0.1.0"
