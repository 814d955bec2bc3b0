"""Command line: `python -m zcser <subcommand>`; each subcommand is one `_cmd_*` function."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from zcser.snapshot import add_cli as _add_snapshot


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark sections and print medians and ratios against pickle protocol 5."""
    from zcser import bench

    bench.run(args.section or None, quick=args.quick, as_json=args.json)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from zcser.bench import SECTIONS

    parser = sub.add_parser("bench", help="benchmarks against pickle protocol 5 (medians, ratios)")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few repeats (smoke test)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--section", action="append", choices=sorted(SECTIONS), help="run only this section"
    )
    parser.set_defaults(func=_cmd_bench)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_bench, _add_snapshot]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand."""
    parser = argparse.ArgumentParser(prog="zcser", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
