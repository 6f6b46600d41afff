"""The local lm-eval tasks of tests/harness: their records, and the folder of YAMLs over JSONL files they make."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

MC = [  # question, choices, index of the right one
    ("copy ab:", ["ab", "ba", "aa"], 0),
    ("copy cd:", ["dc", "cd", "cc"], 1),
    ("copy ca:", ["ac", "cc", "ca"], 2),
    ("copy dd:", ["dd", "da", "ad"], 0),
]
GEN = [("copy ab:", "ab"), ("copy bc:", "bc"), ("copy cd:", "cd")]
MAX_GEN_TOKS = 4


def write_tasks(root: Path) -> Path:
    """dftune_mc (multiple_choice: acc) and dftune_gen (generate_until, stop at a newline: exact_match)."""
    (root / "mc.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                           for q, c, a in MC), encoding="utf-8")
    (root / "gen.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GEN),
                                    encoding="utf-8")
    common = f"dataset_path: json\ntest_split: test\ndoc_to_text: '{{{{question}}}}'\n"
    (root / "dftune_mc.yaml").write_text(textwrap.dedent(f"""\
        task: dftune_mc
        dataset_kwargs: {{data_files: {{test: {root / 'mc.jsonl'}}}, cache_dir: {root / 'cache'}}}
        output_type: multiple_choice
        doc_to_choice: '{{{{choices}}}}'
        doc_to_target: answer
        metric_list: [{{metric: acc}}]
    """) + common, encoding="utf-8")
    (root / "dftune_gen.yaml").write_text(textwrap.dedent(f"""\
        task: dftune_gen
        dataset_kwargs: {{data_files: {{test: {root / 'gen.jsonl'}}}, cache_dir: {root / 'cache'}}}
        output_type: generate_until
        doc_to_target: answer
        generation_kwargs: {{until: ["\\n"], max_gen_toks: {MAX_GEN_TOKS}, do_sample: false}}
        metric_list: [{{metric: exact_match}}]
    """) + common, encoding="utf-8")
    return root
