"""Data layer: read and validate conversation and preference files, tokenise with assistant-only labels, cache,
and batch. The chat template of tokenizers without one (ChatML) is data's too (`encode.CHATML_TEMPLATE`).

Dependency order: preference > prepare > validate, cache, llamafactory > lengths, sources > encode > special_text >
formats, report > readers; collate > encode; cache > manifest. `sources` names what is trained together (files,
LLaMA-Factory registry entries).

Only the light names are re-exported here (reading and checking records: no torch, transformers or datasets), so
importing the package is cheap for the commands' parsers; import tokenising, preparing and collating from their
modules (`dftune.data.encode`, `.prepare`, `.collate`).
"""

from dftune.data.formats import InvalidRecord, normalize_messages, normalize_preference
from dftune.data.readers import Location, RawRecord, load_records
from dftune.data.report import ValidationReport


__all__ = [
    "InvalidRecord",
    "Location",
    "RawRecord",
    "ValidationReport",
    "load_records",
    "normalize_messages",
    "normalize_preference",
]
