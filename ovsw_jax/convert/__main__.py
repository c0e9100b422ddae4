"""``python -m ovsw_jax.convert``: see `ovsw_jax.convert.cli.main`."""

import sys

from ovsw_jax.convert.cli import main

if __name__ == "__main__":
  sys.exit(main())
