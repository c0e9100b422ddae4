"""ovsw_jax: OvSW (ECCV 2024) binary neural networks in JAX, Flax and optax."""

import importlib.util
import os
from pathlib import Path
import platform

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

README = Path(__file__).parent / "README.md"
# OVSW_SANITIZE=1 builds both native libraries under AddressSanitizer and
# UndefinedBehaviorSanitizer (docs/native_safety.md: loading such a build
# needs libasan preloaded; the fuzzers use it).
SANITIZE = os.environ.get("OVSW_SANITIZE", "0") not in ("", "0")


def sanitizer_args() -> tuple[list[str], list[str]]:
  """(compile, link) flags of the OVSW_SANITIZE build; empty without it.

  Any undefined behaviour aborts (no recovery), so a fuzzer sees it; -O1 and
  frame pointers give readable reports.
  """
  if not SANITIZE:
    return [], []
  sanitizers = "-fsanitize=address,undefined"
  return ([sanitizers, "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
           "-g", "-O1"], [sanitizers])


def xnor_kernel() -> list[Extension]:
  """The native XNOR-popcount conv (ovsw_jax/deploy/csrc), built against
  jaxlib's XLA FFI headers (pyproject.toml puts jaxlib in the build env).

  Optional: without a C++ compiler (or jaxlib) the install goes on, and
  inference uses the pure-JAX kernel (`ovsw_jax.deploy.native`).
  """
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    print("ovsw_jax: jaxlib is not in the build environment; the native "
          "XNOR kernel is not built (inference uses the JAX kernel)")
    return []
  include = Path(list(spec.submodule_search_locations)[0]) / "include"
  args = ["-O3", "-std=c++17", "-fno-strict-aliasing",
          # XLA's FFI headers warn under -Wall; the kernel's code does not.
          "-Wno-attributes", "-Wno-return-type"]
  if platform.machine() in ("aarch64", "arm64"):
    args.append("-mcpu=native")  # NEON is baseline; tune for the host.
  compile_sanitized, link_sanitized = sanitizer_args()
  return [Extension("ovsw_jax.deploy._xnor_kernel",
                    ["ovsw_jax/deploy/csrc/xnor_conv.cc"],
                    include_dirs=[str(include)], language="c++",
                    extra_compile_args=args + compile_sanitized,
                    extra_link_args=link_sanitized, optional=not SANITIZE)]


def jpeg_crop_decoder() -> list[Extension]:
  """The native JPEG crop decoder (ovsw_jax/data/csrc), on the system's
  libjpeg(-turbo). Optional: without libjpeg's headers (libjpeg-turbo8-dev,
  libjpeg62-turbo-dev, libjpeg-turbo-devel) or a compiler, the install goes
  on and decoder="auto" uses PIL (`ovsw_jax.data.jpeg`)."""
  compile_sanitized, link_sanitized = sanitizer_args()
  return [Extension("ovsw_jax.data._jpeg_crop",
                    ["ovsw_jax/data/csrc/jpeg_crop.cc"], language="c++",
                    libraries=["jpeg"],
                    extra_compile_args=["-O3", "-std=c++17"] +
                    compile_sanitized,
                    extra_link_args=link_sanitized, optional=not SANITIZE)]


class BuildLibrary(build_ext):
  """Builds the native parts as plain shared libraries, loaded through
  ctypes (they have no Python module init)."""

  def get_export_symbols(self, ext):
    return []


setup(
    name="ovsw_jax",
    version="0.1.0",
    description=("Binary neural networks in JAX/Flax with OvSW's Adaptive "
                 "Gradient Scaling and Silence Awareness Decaying as optax "
                 "transforms."),
    long_description=README.read_text() if README.exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ovsw_jax", "ovsw_jax.*"]),
    ext_modules=xnor_kernel() + jpeg_crop_decoder(),
    cmdclass={"build_ext": BuildLibrary},
    install_requires=[
        "jax>=0.5.0",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.7",
        # tfds.data_source needs these but tfds does not declare them.
        "importlib_resources>=6.0",
        "array_record>=0.5.0",
        "ml-collections>=0.1.1",
        "grain>=0.2.10",
        "clu>=0.0.12",
        "absl-py>=1.4",
        "numpy>=1.26",
        "Pillow>=10.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        # Its bundled 8x8 digits are the quickstart's offline dataset.
        "scikit-learn>=1.3",
        # TensorBoard event files without TensorFlow (pure Python).
        "tensorboardX>=2.6",
        "etils[epath]>=1.5",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",  # pytest.ini runs two workers
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.25",
            "simplejpeg>=1.7",  # tests of decoder="simplejpeg"
            # EventAccumulator reads the event files back in the tests.
            "tensorboard>=2.15",
            # The gs:// tests: the [gcs] clients and a GCS API server on
            # localhost (tests/gcs_emulator.py).
            "ovsw_jax[gcs]",
            "gcp-storage-emulator>=2026.7",
            # tests/test_docs.py builds the site strictly.
            "ovsw_jax[docs]",
        ],
        # The documentation site (docs/, Sphinx with MyST Markdown).
        "docs": [
            "sphinx>=8.0",
            "myst-parser>=4.0",
        ],
        # gs:// workdirs: etils.epath (metrics, config.json, TensorBoard's
        # reader) goes through gcsfs; tensorboardX writes gs:// event files
        # through google-cloud-storage; orbax needs neither (tensorstore).
        "gcs": [
            "gcsfs>=2024.2",
            "etils[epath]>=1.5",
            "google-cloud-storage>=2.14",
        ],
        # Pinned: the version whose CPU build (+cpu, PyTorch's CPU index) our
        # offline machines hold; PyPI's Linux wheel of it is the CUDA build.
        "torch": ["torch==2.13.0"],
        "notebooks": [
            "jupyter>=1.0",
            "ipykernel>=6.25",
        ],
        # Optional JPEG decoder (decoder="simplejpeg"): wheels for x86-64
        # and aarch64.
        "jpeg": ["simplejpeg>=1.7"],
        # benchmarks/input_pipeline.py's tf.data arm only; never the library.
        "bench-tf": ["tensorflow-cpu>=2.16"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
