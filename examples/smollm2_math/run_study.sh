#!/usr/bin/env bash
# The SmolLM2 math study end to end, offline on CPU: data, model, the untrained model's accuracy, then LoRA
# fine-tuning under sft, dft and bft (same seed, same steps) and each one's held-out accuracy; then dft with the
# seed trainer's alpha 0.7, dft whose alpha rises linearly from 0 (SFT) to 1 over the first half of the steps, one
# summary of every run (accuracy, per-template results, a figure), and the untrained model's probability of `×`
# where the answers need it.
#   bash examples/smollm2_math/run_study.sh          (or: make demo-real)
# Writes outputs/smollm2_math/compare/{compare.md,compare.json,compare.png,accuracy.png}, one folder per run, the
# same for outputs/smollm2_math/compare-dft-alpha0.7/ and compare-dft-schedule/, and
# outputs/smollm2_math/{summary.md,accuracy.png}.
set -euo pipefail
OUT=${OUT:-outputs/smollm2_math}
DFTUNE=${DFTUNE:-dftune}
PYTHON=${PYTHON:-python}
"$PYTHON" examples/smollm2_math/make_data.py --output_dir "$OUT/data"
"$DFTUNE" init-model --preset smollm2-135m-instruct --output_dir outputs/smollm2
# The same data for every run; a rerun replaces the previous study's runs.
DATA=(--data_files "$OUT/data/train.jsonl" --eval_files "$OUT/data/heldout.jsonl" --overwrite_output_dir true)
"$DFTUNE" compare examples/smollm2_math/study.yaml --losses sft,dft,bft --extractor last_number \
    --max_new_tokens 96 --eval_base --output_dir "$OUT/compare" "${DATA[@]}" "$@"
"$DFTUNE" compare examples/smollm2_math/study.yaml --losses dft --dft_alpha 0.7 --extractor last_number \
    --max_new_tokens 96 --output_dir "$OUT/compare-dft-alpha0.7" "${DATA[@]}" "$@"
# DFT with alpha 1 reached by a linear schedule from SFT over the first 100 of 200 steps (dft_alpha_schedule).
"$DFTUNE" compare examples/smollm2_math/study.yaml --losses dft --dft_alpha 1.0 --dft_alpha_schedule linear \
    --dft_alpha_warmup_steps 100 --extractor last_number --max_new_tokens 96 \
    --output_dir "$OUT/compare-dft-schedule" "${DATA[@]}" "$@"
"$PYTHON" examples/smollm2_math/summarize.py "$OUT" compare compare-dft-alpha0.7 compare-dft-schedule
"$PYTHON" examples/smollm2_math/token_probability.py --model outputs/smollm2 --data "$OUT/data/train.jsonl"
