"""``python -m ovsw_jax.deploy export|evaluate [flags]``: see `cli`.

  python -m ovsw_jax.deploy --help            # the commands
  python -m ovsw_jax.deploy export --help     # a command's flags
"""

import logging
import sys

# Each command and what it does, for the usage line and --help.
COMMANDS = {
    "export": "pack a training workdir's checkpoint into a 1-bit file",
    "evaluate": "top-1 and speed of a packed file on a dataset's eval split",
}
_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull", "help")


def usage() -> str:
  lines = ["usage: python -m ovsw_jax.deploy {export|evaluate} [flags]", "",
           "commands:"]
  lines += [f"  {name:9s} {what}" for name, what in COMMANDS.items()]
  lines += ["", "python -m ovsw_jax.deploy <command> --help lists the "
            "command's flags, e.g.",
            "  python -m ovsw_jax.deploy export --workdir=/tmp/r20 "
            "--out=/tmp/r20.npz"]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1 and argv[1] in _HELP:
    print(usage())
    sys.exit(0)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    got = repr(argv[1]) if len(argv) > 1 else "no command"
    print(f"error: expected a command, got {got}\n\n{usage()}",
          file=sys.stderr)
    sys.exit(2)
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
