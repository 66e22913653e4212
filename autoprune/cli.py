"""``autoprune``: one entry point; each command is a module in ``autoprune.commands``.

Bad input (a ``UserError``, or an argument argparse refuses) prints one line on stderr and
exits with code 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from autoprune.errors import UserError

# command name -> module with add_parser(subparsers) and run(args) -> int
COMMANDS = {
    "prune": "autoprune.commands.prune",
    "shrink": "autoprune.commands.shrink",
    "eval": "autoprune.commands.eval",
    "export": "autoprune.commands.export",
    "search": "autoprune.commands.search",
    "leaderboard": "autoprune.commands.leaderboard",
    "ui": "autoprune.commands.ui",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoprune", description="Discover and apply pruning policies for causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except UserError as e:
        print(f"autoprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
