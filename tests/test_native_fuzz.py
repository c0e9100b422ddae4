"""A short fixed-seed fuzz of the native code under AddressSanitizer + UBSan.

Both libraries are built with ``OVSW_SANITIZE=1`` into a temporary folder
(the installed ones are left alone) and the three drivers of
`benchmarks.fuzz_native` run in a child process that loads them: the JPEG
decoder, the packed-file loader with both inference backends, and the
kernel's FFI entry. The run must end cleanly, with no sanitizer report and
none of the outcomes that must never happen; the refusals are counted by
kind. benchmarks/fuzz_native.py is the long run of the same.
"""

import pytest

from benchmarks import fuzz_native
from benchmarks.lib import sanitized_build
from ovsw_jax.data import native_jpeg
from ovsw_jax.deploy import native

REASON = sanitized_build.unavailable_reason() or (
    None if native_jpeg.available() and native.available() else
    "the native libraries are not built (pip install -e . with a C++ "
    "compiler and libjpeg-turbo's headers)")


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_short_sanitizer_fuzz_is_clean(tmp_path):
  build_lib = sanitized_build.build(tmp_path / "build")
  s = fuzz_native.fuzz(build_lib, str(tmp_path / "run"), seed=0, jpeg=300,
                       packed=6, kernel=3, timeout=400)
  assert s["returncode"] == 0, (s.get("died_at"), s.get("stderr_tail"))
  assert s["sanitizer_reports"] == [], s["sanitizer_reports"]
  assert s["failures"] == {}, s["failures"]
  jpeg, packed, kernel = s["jpeg"], s["packed"], s["kernel"]
  assert (jpeg["inputs"], packed["inputs"], kernel["inputs"]) == (300, 6, 3)
  # Every bad argument was refused by the wrapper (and the C function); on
  # an image over the pixel limit, as too large.
  bad = sum(v for k, v in jpeg.items() if k.startswith("bad_argument:"))
  assert 30 <= bad <= (jpeg["outcome:refused_argument"] +
                       jpeg["outcome:refused_too_large"]), jpeg
  # Each way of refusing a file happened, and files decoded.
  for outcome in ("refused_corrupt", "refused_too_large", "not_a_jpeg",
                  "decoded", "not_rgb"):
    assert jpeg[f"outcome:{outcome}"] >= 1, (outcome, jpeg)
  outcomes = sum(v for k, v in jpeg.items() if k.startswith("outcome:"))
  assert outcomes == jpeg["inputs"]
  assert packed["outcome:refused"] >= 1 and packed["outcome:loaded"] >= 1
  assert packed["outcome:ran_backends_equal"] == packed["outcome:loaded"]
  assert kernel["outcome:equal"] + kernel["outcome:c_refused"] == 3
