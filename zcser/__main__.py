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


def _pid(pid: int, alive: bool) -> str:
    return "-" if not pid else f"{pid}({'alive' if alive else 'dead'})"


def _cmd_ls(args: argparse.Namespace) -> int:
    """List ZeroBuffer buffers (lock files and /dev/shm) with peers, sizes and utilisation."""
    import json

    from transports.inspect import list_buffers

    infos = list_buffers(args.prefix)
    if args.json:
        print(json.dumps([info.as_json() for info in infos], indent=2))
        return 0
    row = "{:<32} {:<13} {:<6} {:<16} {:<16} {:>12} {:>6} {:<8}"
    print(row.format("NAME", "STATE", "LOCK", "READER", "WRITER", "SHM BYTES", "USED", "HEALTH"))
    for i in infos:
        used = f"{i.utilisation:.0%}" if i.capacity else "-"
        reader, writer = _pid(i.reader_pid, i.reader_alive), _pid(i.writer_pid, i.writer_alive)
        print(row.format(i.name, i.state, i.lock, reader, writer, i.shm_bytes, used, i.health))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Print one buffer's OIEB fields, utilisation band, peers and pinned bytes (1: not found)."""
    import json

    from transports.inspect import inspect_buffer

    info = inspect_buffer(args.name)
    if not info.shm and not info.semaphores and info.lock == "missing":
        print(f"no buffer named {args.name!r} (see `python -m zcser ls`)")
        return 1
    if args.json:
        print(json.dumps(info.as_json(), indent=2))
        return 0
    for key, value in info.as_json().items():
        if key != "oieb":
            print(f"{key:<16} {value}")
    for key, value in (info.oieb or {}).items():
        print(f"  {key:<24} {value}")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    """Remove buffers whose owners are provably dead; print what was removed."""
    import json

    from transports.inspect import collect_garbage

    removed = collect_garbage(args.prefix)
    if args.json:
        print(json.dumps({"removed": removed}))
    else:
        for name in removed:
            print(f"removed {name}")
        print(f"{len(removed)} stale buffer(s) removed")
    return 0


def _add_buffers(sub: argparse._SubParsersAction) -> None:
    for name, func, text in (
        ("ls", _cmd_ls, "list ZeroBuffer buffers with peers, sizes, utilisation"),
        ("inspect", _cmd_inspect, "show one buffer's OIEB, health and peers"),
        ("gc", _cmd_gc, "remove buffers whose reader and writer are provably dead"),
    ):
        parser = sub.add_parser(name, help=text, description=func.__doc__)
        if name == "inspect":
            parser.add_argument("name", help="buffer name (as given to Reader)")
        else:
            parser.add_argument("--prefix", default="", help="only names starting with this")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=func)


def _cmd_demo(args: argparse.Namespace) -> int:
    """Two processes, 8 MiB and 100 MiB objects: checks and a table against Queue and pickle5."""
    from zcser import _demo

    return _demo.run(quick=args.quick, prefix=args.prefix)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="zero-copy channel demo with peers (exit 1 on failure)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--prefix", default=None, help="name prefix of the shared memory used")
    parser.set_defaults(func=_cmd_demo)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_bench,
    _add_snapshot,
    _add_buffers,
    _add_demo,
]


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
