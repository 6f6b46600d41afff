"""`dftune compare`: one config, one run per objective through `dftune.run.run`, then a table and an overlaid plot."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from matplotlib.image import imread

from dftune.cli.main import main
from dftune.compare import objective_config
from dftune.evaluation import wilson_interval


def write_config(tmp_path, model_dir, method: str) -> str:
    data = tmp_path / "train.jsonl"
    evaluation = tmp_path / "eval.jsonl"
    for path, numbers in ((data, range(24)), (evaluation, range(50, 54))):
        path.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": str(i + 1)},
        ]}) + "\n" for i in numbers), encoding="utf-8")  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        model_name_or_path: {model_dir}
        {method}
        data_files: [{data}]
        eval_files: [{evaluation}]
        per_device_train_batch_size: 8
        max_steps: 2
        logging_steps: 1
        eval_strategy: steps
        eval_steps: 1
        save_strategy: "no"
        report_to: none
        use_cpu: true
        disable_tqdm: true
    """), encoding="utf-8")
    return str(config)


def test_switching_objective_clears_the_keys_that_contradict(tmp_path):
    config = write_config(tmp_path, "models/unused", "use_dft_loss: true\n        dft_alpha: 0.5")
    sft = objective_config([config], "sft", 3, tmp_path / "sft")
    assert (sft.method.loss, sft.method.dft_alpha, sft.method.use_dft_loss) == ("sft", None, False)
    assert any("dft_alpha cleared" in note for note in sft.notes)
    training = sft.training
    assert (training.seed, training.output_dir, training.run_name) == (3, str(tmp_path / "sft"), "sft-seed3")
    bft = objective_config([config, "--bft_group_size", "2"], "bft", 1, tmp_path / "bft")
    assert (bft.method.loss, bft.method.dft_alpha, bft.method.bft_group_size) == ("bft", None, 2)
    dft = objective_config([config], "dft", 1, tmp_path / "dft")
    assert (dft.method.loss, dft.method.dft_alpha, dft.method.use_dft_loss) == ("dft", 0.5, True)


@pytest.mark.slow
def test_compare_writes_table_json_and_plot(tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir, "loss: dft\n        dft_alpha: 0.7")
    out = tmp_path / "cmp"
    argv = ["compare", config, "--losses", "sft,dft", "--output_dir", str(out), "--learning_rate", "1e-3",
            "--extractor", "last_number", "--eval_base"]  # fmt: skip
    assert main(argv) == 0

    payload = json.loads((out / "compare.json").read_text())
    runs = payload["runs"]
    assert payload["extractor"] == "last_number"
    assert [r["name"] for r in runs] == ["base", "sft-seed42", "dft-seed42"]
    assert runs[0]["steps"] == 0 and runs[0]["final_eval_ce"] is None
    for run in runs:
        results = [json.loads(line) for line in (out / run["name"] / "eval_results.jsonl").read_text().splitlines()]
        correct = sum(r["correct"] for r in results)
        assert len(results) == 4 and run["accuracy"] == correct / 4
        low, high = run["accuracy_interval"]
        assert (low, high) == pytest.approx(wilson_interval(correct, 4)) and high - low > 0.2  # 4 records: wide
    for run in runs[1:]:  # best: the lowest eval CE the run logged, final: its last (not the minimum twice)
        state = json.loads((out / run["name"] / "trainer_state.json").read_text())
        eval_ce = [e["eval_ce"] for e in state["log_history"] if "eval_ce" in e]
        assert run["steps"] == 2 and len(eval_ce) >= 2
        assert (run["best_eval_ce"], run["final_eval_ce"]) == (min(eval_ce), eval_ce[-1])
        assert 0 < run["final_avg_p_correct"] < 1
    sft_config = (out / "sft-seed42" / "dftune_config.yaml").read_text()
    assert "loss: sft" in sft_config and "dft_alpha: null" in sft_config
    assert "learning_rate: 0.001" in sft_config  # the --key value override reached every run
    table = (out / "compare.md").read_text()
    assert "| sft-seed42 | sft | 42 | 2 |" in table and "| dft-seed42 | dft | 42 | 2 |" in table
    assert "| base | base | 42 | 0 | - | - | - |" in table and "accuracy (last_number) [95% CI]" in table

    image = imread(out / "compare.png")
    assert image.shape[0] > 500 and image[..., :3].std() > 0.05
    for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # matplotlib's C0 and C1: one line colour per run
        assert (np.abs(image[..., :3] - np.array(rgb) / 255).max(axis=-1) < 0.08).sum() > 300
    assert imread(out / "accuracy.png").shape[1] > 400  # its bars are checked in tests/viz
