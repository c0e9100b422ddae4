"""``python -m ovsw_jax.deploy export|evaluate [flags]``: see `cli`."""

import logging
import sys

COMMANDS = ("export", "evaluate")


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    got = repr(argv[1]) if len(argv) > 1 else "no command"
    sys.exit(f"usage: python -m ovsw_jax.deploy {{{'|'.join(COMMANDS)}}} "
             f"[flags] (got {got}); e.g. python -m ovsw_jax.deploy export "
             "--workdir=/tmp/r20 --out=/tmp/r20.npz")
  # Library logs (orbax's INFO lines) at WARNING unless --verbosity asks.
  if not any(a.startswith(("--verbosity", "-v=")) for a in argv):
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
  # Imported here so that a bad command fails fast, before JAX loads.
  from ovsw_jax.deploy import cli  # pylint: disable=g-import-not-at-top
  command, rest = argv[1], argv[2:]
  try:
    if command == "export":
      cli.export_command([f"{argv[0]} export", *rest])
    else:
      cli.evaluate_command(rest)
  except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
    # One line naming the problem and the fix; no traceback.
    first = (str(e).splitlines() or [type(e).__name__])[0]
    sys.exit(f"python -m ovsw_jax.deploy {command}: {first}")


if __name__ == "__main__":
  main(sys.argv)
