"""``python -m ovsw_jax.summary --model=NAME``: see `ovsw_jax.summary.main`."""

import sys

from ovsw_jax.summary import main

if __name__ == "__main__":
  sys.exit(main())
