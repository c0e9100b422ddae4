"""Helpers for tests that SIGKILL a train.py run and resume it."""

import os
import signal
import subprocess
import time
from typing import Callable


def committed_steps(workdir) -> list[int]:
  """The steps with a committed checkpoint in ``workdir`` (orbax writes a
  temporary directory and renames it to the step when complete)."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def kill_when(proc: subprocess.Popen, ready: Callable[[], object],
              what: str, timeout_s: float = 300, poll_s: float = 0.01
              ) -> None:
  """SIGKILLs ``proc`` as soon as ``ready()``; fails if it ends first or
  ``timeout_s`` passes (killed then too: no process outlives the test)."""
  try:
    deadline = time.time() + timeout_s
    while not ready():
      assert proc.poll() is None, f"the run ended before {what}"
      assert time.time() < deadline, f"no {what} within {timeout_s:.0f} s"
      time.sleep(poll_s)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
