"""The tie between a mesh process and its parent (services/runtime/processes.py): a child started
through it ends when its parent is killed, says clearly when its command cannot run, and does not
start at all when its parent is already gone."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.runtime.processes import tied_to_parent

from meshkit import alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tie uses Linux's PR_SET_PDEATHSIG")

PARENT = """
import subprocess, sys, time
from services.runtime.processes import tied_to_parent
child = subprocess.Popen(tied_to_parent(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_ends_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":  # it became the command
            assert time.monotonic() < deadline, "the child never became its command"
            time.sleep(0.02)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(child):
            assert time.monotonic() < deadline, "the child outlived its killed parent"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.wait()


def test_the_command_gets_the_signals_python_ignores_as_a_shell_would_give_them():
    command = tied_to_parent(["grep", "-E", "^SigIgn", "/proc/self/status"])
    ignored = int(subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), sig


def test_a_command_that_cannot_run_is_named(tmp_path):
    done = subprocess.run(tied_to_parent(["/nonexistent/envoy"]), capture_output=True, text=True, timeout=30)
    assert done.returncode == 127
    assert done.stderr == "cannot run /nonexistent/envoy: No such file or directory\n"
    done = subprocess.run(tied_to_parent([str(tmp_path)]), capture_output=True, text=True, timeout=30)   # a folder
    assert done.returncode == 126 and done.stderr == f"cannot run {tmp_path}: Permission denied\n"


def test_a_child_whose_parent_is_gone_does_not_start(tmp_path):
    marker = tmp_path / "ran"
    # Started for a parent (pid 0: no process has it) that is not the one it has: as if its own
    # had died meanwhile.
    command = [sys.executable, "-m", "services.runtime.processes", "0", "touch", str(marker)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and not marker.exists()
    assert done.stderr == "not starting touch: its parent (pid 0) is gone\n"
    command = tied_to_parent(["touch", str(marker)])
    assert subprocess.run(command, timeout=30).returncode == 0 and marker.exists()
