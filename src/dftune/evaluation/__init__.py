"""Generation-based evaluation of held-out conversations.

Only the light names are re-exported here (extractors and reports: no torch), so the commands' parsers can read
`EXTRACTORS` cheaply; generation is `dftune.evaluation.generate`.
"""

from dftune.evaluation.extract import EXTRACTORS
from dftune.evaluation.report import EvalReport, RecordResult, wilson_interval

__all__ = [
    "EXTRACTORS",
    "EvalReport",
    "RecordResult",
    "wilson_interval",
]
