"""``python -m ovsw_jax.deploy export|evaluate [flags]``: see `cli`."""

import sys

COMMANDS = ("export", "evaluate")


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    got = repr(argv[1]) if len(argv) > 1 else "no command"
    sys.exit(f"usage: python -m ovsw_jax.deploy {{{'|'.join(COMMANDS)}}} "
             f"[flags] (got {got}); e.g. python -m ovsw_jax.deploy export "
             "--workdir=/tmp/r20 --out=/tmp/r20.npz")
  # Imported here so that a bad command fails fast, before JAX loads.
  from ovsw_jax.deploy import cli  # pylint: disable=g-import-not-at-top
  command, rest = argv[1], argv[2:]
  if command == "export":
    cli.export_command([f"{argv[0]} export", *rest])
  else:
    cli.evaluate_command(rest)


if __name__ == "__main__":
  main(sys.argv)
