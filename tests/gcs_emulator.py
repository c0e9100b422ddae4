"""A GCS API server on localhost for the gs:// tests: gcp-storage-emulator.

``gcs_bucket`` (a session fixture) starts ``python -m tests.gcs_emulator
start --host 127.0.0.1 --port <free> --in-memory --default-bucket <b>`` in a
subprocess, waits until it answers, points the GCS clients at it (for the
tests and their subprocesses) and stops it at the end:

* gcsfs (under `etils.epath`) and google-cloud-storage (under tensorboardX):
  ``STORAGE_EMULATOR_HOST``; both then fall back to anonymous credentials;
* tensorstore (under orbax), whose GCS driver ignores that variable:
  ``TENSORSTORE_GCS_HTTP_URL``;
* ``GCE_METADATA_ROOT`` at a closed port, so that no client waits for a GCE
  metadata server;
* ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs's bucket-type lookup
  goes through the Storage Control API, which the emulator lacks (each
  lookup fails with a warning, and renames retry a missing moveTo call).

Run as ``python -m tests.gcs_emulator start ...`` rather than
``python -m gcp_storage_emulator start ...`` for one reason: the emulator's
media downloads omit the ``x-goog-generation`` header that real GCS sends,
and tensorstore refuses such a response ("Malformed StorageGeneration"), so
orbax could neither finish a save (OCDBT reads its manifest back) nor
restore. `_add_generation_headers` adds the header; nothing else changes.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "ovsw-test"  # GCS names have 3 to 63 characters; tensorstore checks
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _add_generation_headers() -> None:
  """Makes the emulator's media downloads carry x-goog-generation."""
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  plain = objects.download

  def download(request, response, storage, *args, **kwargs):
    plain(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
      obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  objects.download = download  # objects.get calls it for ?alt=media
  replaced = 0
  for _, methods in server.HANDLERS:
    for method, handler in methods.items():
      if handler is plain:
        methods[method] = download
        replaced += 1
  if not replaced:  # a gcp-storage-emulator whose routes moved
    raise RuntimeError("gcp_storage_emulator.server.HANDLERS no longer routes "
                       "to objects.download; update tests/gcs_emulator.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log: str,
                   timeout: float = 60.0) -> None:
  deadline = time.time() + timeout
  while True:
    try:
      with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2):
        return
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        with open(log) as f:
          raise RuntimeError(f"GCS emulator did not start: {f.read()[-2000:]}")
      time.sleep(0.1)


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
  """``gs://ovsw-test``, on an emulator that runs for the session.

  Skips (with the reason) when gcp-storage-emulator or the GCS client
  packages (pip install -e ".[gcs]") are absent.
  """
  for module in ("gcp_storage_emulator", "gcsfs", "google.cloud.storage"):
    # Not imported here: gcsfs reads its environment at import.
    if importlib.util.find_spec(module.split(".")[0]) is None or \
        importlib.util.find_spec(module) is None:
      pytest.skip(f"{module} is not installed: pip install -e '.[test]' "
                  "(the gs:// tests need gcp-storage-emulator and the [gcs] "
                  "extra)")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = str(tmp_path_factory.mktemp("gcs_emulator") / "emulator.log")
  with open(log, "w") as out:
    # The log goes to a file: a pipe nobody reads would fill and block it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_emulator", "start", "--host",
         "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket",
         BUCKET, "--quiet"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GCE_METADATA_ROOT": "127.0.0.1:1",
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  try:
    _wait_until_up(url, proc, log)
    os.environ.update(env)
    yield f"gs://{BUCKET}"
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


if __name__ == "__main__":
  _add_generation_headers()
  from gcp_storage_emulator import __main__ as emulator_main  # pylint: disable=g-import-not-at-top
  emulator_main.main(sys.argv[1:])
