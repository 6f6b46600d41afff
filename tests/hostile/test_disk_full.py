"""A full disk, for real: output_dir on a tmpfs too small for what the run writes. One message (disk full, the
path, free and needed space, what is kept), no traceback; the same command with `auto` continues once there is
room. A tmpfs needs root: these cases skip elsewhere."""

from __future__ import annotations

import errno
import json
import logging

from dftune.runtime.checkpoints import COMPLETE_MARKER, FINAL_SAVE_MARKER, checkpoint_problem

from .conftest import chat, clean_error, dftune, train_argv, write_jsonl


def test_disk_full_during_a_checkpoint_keeps_the_last_complete_one(tiny_model_dir, data_file, small_disk, capsys,
                                                                   caplog):
    out = small_disk("2m") / "run"  # one checkpoint (~1.5 MB) fits, the second does not
    argv = train_argv(tiny_model_dir, data_file, out, "--save_steps", "1", "--resume_from_checkpoint", "auto", steps=3)
    outcome = dftune(capsys, *argv)
    clean_error(outcome, 2, "disk full while writing checkpoint-2 to", str(out), "MB free; it needs about",
                f"The last complete checkpoint, {out / 'checkpoint-1'}, is kept", "--resume_from_checkpoint auto")
    assert checkpoint_problem(out / "checkpoint-1") is None and (out / "checkpoint-1" / COMPLETE_MARKER).is_file()
    assert not (out / "checkpoint-2").exists()  # the half-written one is removed: its space is given back

    small_disk("20m")  # the user frees space and runs the same command again
    with caplog.at_level(logging.INFO):
        assert dftune(capsys, *argv).code == 0
    assert f"resuming from {out / 'checkpoint-1'}" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


def test_disk_full_during_the_final_save_leaves_a_folder_auto_accepts(tiny_model_dir, data_file, small_disk, capsys):
    out = small_disk("300k") / "run"  # the data report fits; the final model (~460 KB) does not
    argv = train_argv(tiny_model_dir, data_file, out, "--save_strategy", "no", "--resume_from_checkpoint", "auto", steps=2)
    outcome = dftune(capsys, *argv)
    clean_error(outcome, 2, "disk full while writing the final model to", str(out), "No checkpoint was saved")
    assert (out / FINAL_SAVE_MARKER).is_file()

    small_disk("20m")
    assert dftune(capsys, *argv).code == 0  # not "holds another run": these are this run's leftovers
    assert not (out / FINAL_SAVE_MARKER).exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_a_finished_run_still_needs_overwrite(tiny_model_dir, data_file, tmp_path, capsys):
    """The leftovers rule is for a save cut short only: a finished run is not trained over by `auto`."""
    out = tmp_path / "run"
    assert dftune(capsys, *train_argv(tiny_model_dir, data_file, out, "--save_strategy", "no")).code == 0
    assert not (out / FINAL_SAVE_MARKER).exists()
    other = write_jsonl(out.parent / "other.jsonl", [chat()] * 4)
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, other, out, "--resume_from_checkpoint", "auto")), 2,
                "holds another run")


def test_disk_full_writing_the_data_report(tmp_path, small_disk, capsys):
    path = write_jsonl(tmp_path / "big.jsonl", ["{oops"] * 3000)  # a report of 3000 errors: ~300 KB
    report = small_disk("64k") / "report.json"
    clean_error(dftune(capsys, "data", "check", path, "--report", report), 2,
                f"disk full while writing the report to {report}", "write the report elsewhere")


def test_disk_full_writing_a_plot(tiny_model_dir, data_file, tmp_path, small_disk, capsys):
    out = tmp_path / "run"
    assert dftune(capsys, *train_argv(tiny_model_dir, data_file, out)).code == 0
    png = small_disk("8k") / "curves.png"
    clean_error(dftune(capsys, "plot", out, "--output", png), 2, f"disk full while writing the plot to {png}")


def test_enospc_from_the_lowest_write_of_a_checkpoint(tiny_model_dir, data_file, tmp_path, capsys, monkeypatch):
    """Without a tmpfs: torch.save's own writer fails as on a full disk (its RuntimeError, not an OSError)."""
    import torch.serialization

    real = torch.serialization._open_zipfile_writer

    def failing(name_or_buffer):
        if "checkpoint-2" in str(name_or_buffer):  # the first checkpoint is written, the second is not
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write "
                               f"failed ({errno.errorcode[errno.ENOSPC]})")
        return real(name_or_buffer)

    monkeypatch.setattr(torch.serialization, "_open_zipfile_writer", failing)
    out = tmp_path / "run"
    outcome = dftune(capsys, *train_argv(tiny_model_dir, data_file, out, "--save_steps", "1", steps=3))
    clean_error(outcome, 2, "disk full while writing checkpoint-2", f"{out / 'checkpoint-1'}, is kept")
    assert checkpoint_problem(out / "checkpoint-1") is None and not (out / "checkpoint-2").exists()
