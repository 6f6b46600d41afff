"""`dftune plot`: one PNG of one or several runs' curves, checked as an image, from saved trainer_state.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from dftune.cli.main import main
from dftune.viz.accuracy import plot_accuracy, plot_grouped_accuracy

BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's C0 and C1: the first two runs' lines


def write_run(run_dir, scale: float) -> None:
    """A trainer_state.json as `dftune train` writes it: train entries every step, eval entries every 5."""
    history = []
    for step in range(1, 21):
        decay = math.exp(-step / 8)
        history.append({"step": step, "loss": scale * decay, "ce": decay + 0.1, "avg_p_correct": 1 - scale * decay,
                        "token_accuracy": step / 25, "grad_norm": 1 / step, "learning_rate": 1e-3 * (1 - step / 21)})
        if step % 5 == 0:
            history.append({"step": step, "eval_loss": scale * decay + 0.1, "eval_ce": decay + 0.2})
    history.append({"step": 20, "train_runtime": 1.0, "train_loss": 0.5})
    run_dir.mkdir(parents=True)
    (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tol: float = 0.08) -> int:
    return int((np.abs(image[..., :3] - np.array(rgb) / 255).max(axis=-1) < tol).sum())


def test_plot_one_and_several_runs(tmp_path, capsys):
    write_run(tmp_path / "sft", 1.0)
    write_run(tmp_path / "dft", 0.5)

    assert main(["plot", str(tmp_path / "sft"), "--output", str(tmp_path / "one.png")]) == 0
    one = imread(tmp_path / "one.png")
    assert one.shape[0] > 500 and one.shape[1] > 1000  # a 2 x 3 grid of panels
    assert one[..., :3].std() > 0.05  # not blank
    assert pixels_near(one, BLUE) > 500 and pixels_near(one, ORANGE) < 50

    argv = ["plot", str(tmp_path / "sft"), str(tmp_path / "dft"), "--output", str(tmp_path / "two.png")]
    assert main(argv) == 0
    two = imread(tmp_path / "two.png")
    assert two.shape == one.shape
    assert pixels_near(two, BLUE) > 500 and pixels_near(two, ORANGE) > 500  # a line colour per run
    assert "two.png" in capsys.readouterr().out


def test_plot_without_trainer_state_is_a_clear_error(tmp_path, capsys):
    code = main(["plot", str(tmp_path), "--output", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "no trainer_state.json" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_plot_labels_one_per_run(tmp_path, capsys):
    write_run(tmp_path / "a" / "dft", 1.0)
    write_run(tmp_path / "b" / "dft", 0.5)
    runs = [str(tmp_path / "a" / "dft"), str(tmp_path / "b" / "dft")]
    assert main(["plot", *runs, "--labels", "alpha 1,alpha 0.7", "--output", str(tmp_path / "ok.png")]) == 0
    code = main(["plot", *runs, "--labels", "only one", "--output", str(tmp_path / "x.png")])
    assert code == 2 and "--labels needs 2 different names" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_accuracy_bars_have_the_heights_of_their_values(tmp_path):
    path = plot_accuracy({"base": (0.2, 0.1, 0.3), "dft": (0.8, 0.7, 0.9)}, tmp_path / "acc.png", title="held-out")
    image = imread(path)[..., :3]

    def column_height(rgb: tuple[int, int, int]) -> int:
        """Rows in which the bar's colour appears: its height in pixels."""
        mask = np.abs(image - np.array(rgb) / 255).max(axis=-1) < 0.08
        return int(mask.any(axis=1).sum())

    base, dft = column_height((0x1F, 0x77, 0xB4)), column_height((0xFF, 0x7F, 0x0E))
    assert base > 10 and dft / base == pytest.approx(4.0, rel=0.1)


def test_grouped_bars_have_the_heights_of_their_values_one_colour_per_series(tmp_path):
    """Group sft holds both series (tasks), group dft only the first: blue bars 0.2 and 0.6, one orange bar 0.8."""
    groups = {"sft": {"math": (0.2, 0.1, 0.3), "copy": (0.8, 0.7, 0.9)}, "dft": {"math": (0.6, 0.5, 0.7)}}
    image = imread(plot_grouped_accuracy(groups, tmp_path / "grouped.png", title="held-out"))[..., :3]

    def columns(rgb: tuple[int, int, int]) -> dict[int, int]:
        """Height in pixels of the colour in each pixel column that holds a bar (not the legend's small patch)."""
        mask = np.abs(image - np.array(rgb) / 255).max(axis=-1) < 0.08
        heights = mask.sum(axis=0)
        return {x: int(h) for x, h in enumerate(heights) if h > 20}

    blue, orange = columns(BLUE), columns(ORANGE)
    left = [h for x, h in blue.items() if x < min(orange)]
    right = [h for x, h in blue.items() if x > max(orange)]
    assert left and right and not [x for x in blue if min(orange) <= x <= max(orange)]  # sft: blue left of orange
    assert max(right) / max(left) == pytest.approx(3.0, rel=0.1)
    assert max(orange.values()) / max(left) == pytest.approx(4.0, rel=0.1)
