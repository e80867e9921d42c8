"""The process harness itself: a stop that had to SIGKILL something fails the test."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import Master, stop_all

DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"


class Deaf(Master):
    """A "master" that ignores SIGTERM."""

    def __init__(self) -> None:
        super().__init__()
        self.process = subprocess.Popen([sys.executable, "-c", DEAF], stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.process.stdout.readline()  # its handler is set: SIGTERM is ignored from here on


def test_a_master_that_must_be_killed_fails_the_teardown() -> None:
    deaf = Deaf()
    assert deaf.stop(timeout=0.3) == -9
    assert deaf.killed == [f"master {deaf.pid}"]
    with pytest.raises(pytest.fail.Exception, match="teardown had to SIGKILL"):
        stop_all([deaf])


def test_a_clean_stop_passes() -> None:
    polite = Master()
    polite.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_all([polite])
    assert polite.process.returncode == -15 and not polite.killed
