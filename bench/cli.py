"""`acmix-bench` command line: a thin layer over the suite's functions.

Each subcommand lives in its own module exposing `register(subparsers)`, which
adds a parser whose `func(args) -> int` does the work. Add new subcommands to
SUBCOMMANDS.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

SUBCOMMANDS = [
    "bench.demo",
    "bench.flops",
    "bench.match",
    "bench.speed",
    "bench.benchmark",
    "bench.run_cli",
    "bench.report_cli",
]


def version() -> str:
    """The installed package's version (pyproject.toml), or the source tree's when not installed."""
    from importlib import metadata

    try:
        return metadata.version("acmix-bench")
    except metadata.PackageNotFoundError:
        import os
        import re

        pp = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
        m = re.search(r'^version = "([^"]+)"', open(pp).read(), re.M) if os.path.exists(pp) else None
        return (m.group(1) + " (source tree)") if m else "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acmix-bench",
        description="Benchmark suite for convolution, self-attention and ACmix operators.",
    )
    parser.add_argument("--version", action="version", version=f"acmix-bench {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `run --jobs N` starts its workers with these
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"acmix-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk, not the input: full, read-only, no permission
        if e.errno not in DISK_ERRNOS:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"acmix-bench {args.command}: error: {e.strerror or e}{where}; free space or fix the directory and "
              f"rerun the same command (records already written are intact)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
