#!/usr/bin/env bash
# The SmolLM2 math study end to end, offline on CPU: data, model, the untrained model's accuracy, then LoRA
# fine-tuning under sft, dft and bft (same seed, same steps) and each one's held-out accuracy.
#   bash examples/smollm2_math/run_study.sh          (or: make demo-real)
# Writes outputs/smollm2_math/compare/{compare.md,compare.json,compare.png,accuracy.png} and one folder per run.
set -euo pipefail
OUT=${OUT:-outputs/smollm2_math}
DFTUNE=${DFTUNE:-dftune}
PYTHON=${PYTHON:-python}
"$PYTHON" examples/smollm2_math/make_data.py --output_dir "$OUT/data"
"$DFTUNE" init-model --preset smollm2-135m-instruct --output_dir outputs/smollm2
"$DFTUNE" compare examples/smollm2_math/study.yaml --losses sft,dft,bft --extractor last_number \
    --max_new_tokens 96 --eval_base --output_dir "$OUT/compare" \
    --data_files "$OUT/data/train.jsonl" --eval_files "$OUT/data/heldout.jsonl" "$@"
