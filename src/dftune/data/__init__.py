"""Data layer: read and validate conversation and preference files, tokenise with assistant-only labels, cache,
and batch. The chat template of tokenizers without one (ChatML) is data's too (`encode.CHATML_TEMPLATE`).

Dependency order: preference > prepare > validate, cache, llamafactory > lengths, sources > encode > formats, report >
readers; collate > encode. `sources` names what is trained together (files, LLaMA-Factory registry entries).
"""

from dftune.data.collate import DataCollatorForChat, configure_packing
from dftune.data.encode import encode_messages
from dftune.data.formats import InvalidRecord, normalize_messages, normalize_preference
from dftune.data.prepare import PreparedData, prepare_datasets
from dftune.data.readers import Location, RawRecord, load_records
from dftune.data.report import ValidationReport


__all__ = [
    "DataCollatorForChat",
    "InvalidRecord",
    "Location",
    "PreparedData",
    "RawRecord",
    "ValidationReport",
    "configure_packing",
    "encode_messages",
    "load_records",
    "normalize_messages",
    "normalize_preference",
    "prepare_datasets",
]
