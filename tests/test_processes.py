"""The subprocess time limits of the tests scale with DFTUNE_TEST_TIMEOUT_FACTOR, and a timeout names its step."""

from __future__ import annotations

import subprocess
import sys

import processes
import pytest

SLEEP = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"]


def test_the_factor_scales_every_limit(monkeypatch):
    monkeypatch.delenv(processes.FACTOR_ENV, raising=False)
    assert processes.scaled(300) == 300
    monkeypatch.setenv(processes.FACTOR_ENV, "2.5")
    assert processes.scaled(300) == 750
    for bad in ("0", "-1", "slow", "inf", "nan"):
        monkeypatch.setenv(processes.FACTOR_ENV, bad)
        with pytest.raises(pytest.fail.Exception, match=f"{processes.FACTOR_ENV}='{bad}': give a positive number"):
            processes.scaled(1)


def test_a_hung_run_fails_naming_its_step_and_the_scaled_limit(monkeypatch):
    monkeypatch.setenv(processes.FACTOR_ENV, "0.02")  # 100 s x 0.02: the 30 s sleep is killed after 2 s
    with pytest.raises(pytest.fail.Exception) as failed:
        processes.run(SLEEP, step="the sleeper", timeout=100, capture_output=True, text=True)
    message = str(failed.value)
    assert message.startswith("the sleeper: hung, no exit within 2 s (100 s x DFTUNE_TEST_TIMEOUT_FACTOR=0.02")
    assert "started" in message  # the output it wrote before hanging


def test_a_hung_process_is_killed_and_named(monkeypatch):
    monkeypatch.setenv(processes.FACTOR_ENV, "0.02")
    proc = subprocess.Popen(SLEEP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with pytest.raises(pytest.fail.Exception, match="node 0: hung, no exit within 2 s"):
        processes.communicate(proc, step="node 0", timeout=100)
    assert proc.returncode is not None  # killed, not left running


def test_a_run_within_its_limit_returns_its_result():
    done = processes.run([sys.executable, "-c", "print(6 * 7)"], step="print", timeout=60, capture_output=True,
                         text=True)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "42\n")
