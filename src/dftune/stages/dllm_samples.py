"""Stage dllm's evaluation samples: after every evaluation, a few held-out prompts decoded by the model being
trained, with their references, in the log, in `output_dir/eval_samples.jsonl`, and in the trackers that take
text (TensorBoard's text tab, a W&B table), so a user sees what the model writes, not only its loss.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback

from dftune.config.decoding_args import DecodingArguments
from dftune.data.encode import IGNORE_INDEX
from dftune.diffusion import decode, truncate_at_eos

logger = logging.getLogger(__name__)
SAMPLES_FILE = "eval_samples.jsonl"


def split_record(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids: everything before the first answer token, reference ids: the first reply's tokens)."""
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    end = next((i for i in range(start, len(labels)) if labels[i] == IGNORE_INDEX), len(labels))
    return input_ids[:start], input_ids[start:end]


class EvalSamples(TrainerCallback):
    """Decodes the first `count` eval records after each evaluation with `options` (stage dllm's decoding keys, the
    ones `dftune generate` and `dftune eval` take), cut at the first EOS as `dftune eval` scores a reply. Each row
    also has the denoising steps the sample took."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mask_token_id: int, *, shift_logits: bool,
                 options: DecodingArguments | None = None, count: int = 3) -> None:  # fmt: skip
        self.tokenizer, self.mask_token_id = tokenizer, mask_token_id
        self.shift_logits, self.count = shift_logits, count
        self.options = options or DecodingArguments()
        self.trainer: Any = None  # set by `attach`

    def attach(self, trainer: Any) -> EvalSamples:
        self.trainer = trainer
        return self

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        dataset = self.trainer.eval_dataset
        if dataset is None or not state.is_world_process_zero:
            return
        model = self.trainer.model
        device = next(model.parameters()).device
        rows = []
        for record in dataset.select(range(min(self.count, len(dataset)))):
            prompt, reference = split_record(list(record["input_ids"]), list(record["labels"]))
            if not prompt or not reference:
                continue
            eos = self.tokenizer.eos_token_id
            with self.trainer.whole_sequences():  # decoded here alone, also under sequence parallelism
                out = decode(model, torch.tensor([prompt], device=device), mask_token_id=self.mask_token_id,
                             options=self.options, eos_token_id=eos, shift_logits=self.shift_logits)  # fmt: skip
            text = lambda tokens: self.tokenizer.decode(tokens, skip_special_tokens=True).strip()  # noqa: E731
            rows.append({"step": state.global_step, "prompt": text(prompt), "reference": text(reference),
                         "sample": text(truncate_at_eos(out.ids[0].tolist(), eos)), "decode_steps": out.steps})
        for row in rows:
            logger.info("eval sample at step %d: %r -> %r (reference %r)", row["step"], row["prompt"][-60:],
                        row["sample"], row["reference"])  # fmt: skip
        with open(Path(args.output_dir) / SAMPLES_FILE, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        self._to_trackers(rows, state.global_step)

    def _to_trackers(self, rows: list[dict], step: int) -> None:
        table = "\n".join(f"| {r['prompt'][-60:]!r} | {r['reference']!r} | {r['sample']!r} |" for r in rows)
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                callback.tb_writer.add_text("eval/samples", "| prompt | reference | sample |\n|---|---|---|\n" + table,
                                            step)  # fmt: skip
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is not None:
            columns = ["step", "prompt", "reference", "sample"]
            wandb.log({"eval/samples": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
