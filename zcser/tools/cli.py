"""Command line: `python -m zcser <subcommand>` (or `zcser`); each subcommand is one `_cmd_*`."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from transports.errors import TransportError
from transports.mmapfile import remove_stale_temp_files
from zcser.errors import ZcserError
from zcser.snapshot import snapshot_info, verify_file

_DESCRIPTION = """\
zcser moves Python objects holding big arrays (numpy, Arrow, torch, bytes) between processes
through shared memory, and into snapshot files, without copying the arrays."""

_EPILOG = """\
examples:
  zcser demo                       two processes: checks and timings against multiprocessing
  zcser bench --quick --plot b.png benchmarks against peers measured in the same run
  zcser ls                         shared-memory buffers on this machine, their peers and use
  zcser inspect NAME               one buffer in detail (--json for scripts)
  zcser gc                         remove buffers left behind by dead processes
  zcser snapshot info FILE         what a snapshot file holds (JSON; --verify checks digests)

docs: docs/ in the source tree (build with `make docs`); every subcommand has --help."""

_SNAPSHOT_DESCRIPTION = """\
info PATH: print what a snapshot file (zcser.save) holds as JSON: format version, sizes, the
buffer table, root type and codec schema; --verify also checks every digest (exit 1 on damage).
clean DIR: remove temporary files left in DIR by killed snapshot writers (live ones are kept)."""


def _progress(names: list[str]) -> Iterable[str]:
    """`names`, with a progress bar on stderr when tqdm is installed and stderr is a terminal."""
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return names
    bar: Iterable[str] = tqdm(names, desc="bench", unit="section", file=sys.stderr, disable=None)
    return bar


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark sections; print medians and ratios, optionally plot them to a PNG."""
    from zcser.tools.bench import runner as bench

    if args.plot:
        from zcser.tools.plot import plot  # fail before measuring if matplotlib is missing

        _require_matplotlib()
    results: dict[str, list[dict[str, Any]]] = {}
    names = args.section or list(bench.SECTIONS)
    bar = _progress(names)
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        if args.json:
            results[name] = bench.SECTIONS[name](args.quick)
        else:
            results.update(bench.run([name], quick=args.quick))
    if args.json:
        print(json.dumps(results, indent=1))
    if args.plot:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        machine = f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}"
        mode = "--quick, " if args.quick else ""
        plot(results, args.plot, subtitle=f"{when}, {mode}{machine}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("zcser bench --plot needs matplotlib: pip install 'zcser[plot]'") from None


def _add_bench(sub: argparse._SubParsersAction[Any]) -> None:
    from zcser.tools.bench.runner import SECTIONS

    parser = sub.add_parser(
        "bench",
        help="benchmarks against peers measured in the same run (medians, ratios)",
        description="Run benchmark sections; every zcser number is printed next to peers "
        "(pickle 5, multiprocessing, npy, Arrow IPC, ...) measured in the same run, so ratios "
        "mean something on a noisy machine. A full run takes minutes: try --quick first.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few repeats (smoke test)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )
    parser.add_argument(
        "--section",
        action="append",
        choices=sorted(SECTIONS),
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(sorted(SECTIONS))}",
    )
    parser.add_argument(
        "--plot", metavar="PATH", help="also draw the results as a PNG (needs zcser[plot])"
    )
    parser.set_defaults(func=_cmd_bench)


def _pid(pid: int, alive: bool) -> str:
    return "-" if not pid else f"{pid}({'alive' if alive else 'dead'})"


def _cmd_ls(args: argparse.Namespace) -> int:
    """List ZeroBuffer buffers (lock files and /dev/shm) with peers, sizes and utilisation, then
    fan-out segments (zcser.Publisher) with their publisher and subscribers. --json: one list,
    fan-out rows marked "kind": "fanout"."""
    from transports.admin import list_buffers, list_fanouts

    infos = list_buffers(args.prefix)
    fanouts = list_fanouts(args.prefix)
    if args.json:
        rows = [info.as_json() for info in infos] + [f.as_json() for f in fanouts]
        print(json.dumps(rows, indent=2))
        return 0
    row = "{:<32} {:<13} {:<6} {:<16} {:<16} {:>12} {:>6} {:<8}"
    print(row.format("NAME", "STATE", "LOCK", "READER", "WRITER", "SHM BYTES", "USED", "HEALTH"))
    for i in infos:
        used = f"{i.utilisation:.0%}" if i.capacity else "-"
        reader, writer = _pid(i.reader_pid, i.reader_alive), _pid(i.writer_pid, i.writer_alive)
        print(row.format(i.name, i.state, i.lock, reader, writer, i.shm_bytes, used, i.health))
    if fanouts:
        row = "{:<32} {:<13} {:<7} {:<16} {:>11} {:>12} {:>12} {:>10}"
        print()
        print(
            row.format(
                "FAN-OUT",
                "STATE",
                "LOCK",
                "PUBLISHER",
                "SUBSCRIBERS",
                "CAPACITY",
                "SHM BYTES",
                "MESSAGES",
            )
        )
        for f in fanouts:
            publisher = "closed" if f.closed else _pid(f.publisher_pid, f.publisher_alive)
            subs = f"{f.connected}/{f.slots}" if f.slots else "-"
            print(
                row.format(
                    f.name, f.state, f.lock, publisher, subs, f.capacity, f.shm_bytes, f.messages
                )
            )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Print one buffer's OIEB fields, utilisation band, peers and pinned bytes; for a pool
    (a zcser.Receiver's NAME) its places, connected senders and each ring; for a fan-out its
    publisher and subscribers (1: not found)."""
    from transports.admin import fanout_names, inspect_buffer, inspect_fanout, inspect_pool

    pool = inspect_pool(args.name)
    if pool is not None:
        _print_pool(pool, args.json)
        return 0
    info = inspect_buffer(args.name)
    if not info.shm and not info.semaphores and info.lock == "missing":
        print(f"no buffer named {args.name!r} (see `python -m zcser ls`)")
        return 1
    if args.name in fanout_names(args.name):
        fanout = inspect_fanout(args.name)
        if not _print_fields(fanout.as_json(), args.json, ("subscribers",)):
            for sub in fanout.subscribers:
                print("  " + "  ".join(f"{k} {v}" for k, v in sub.items()))
        return 0
    if not _print_fields(info.as_json(), args.json, ("oieb",)):
        for key, value in (info.oieb or {}).items():
            print(f"  {key:<24} {value}")
    return 0


def _print_fields(fields: dict[str, Any], as_json: bool, nested: tuple[str, ...]) -> bool:
    """`inspect`'s head: all of `fields` as JSON (True: nothing more to print), else one
    aligned line per field but the `nested` ones, which the caller prints its own way."""
    if as_json:
        print(json.dumps(fields, indent=2))
        return True
    for key, value in fields.items():
        if key not in nested:
            print(f"{key:<16} {value}")
    return False


def _print_pool(pool: Any, as_json: bool) -> None:
    """`inspect` of a pool: its fields, then one line per place (sender and ring)."""
    if _print_fields(pool.as_json(), as_json, ("senders", "rings")):
        return
    for place, ring in zip(pool.senders, pool.rings, strict=True):
        sender = _pid(place["pid"], place["alive"])
        used = f"{ring.utilisation:.0%}" if ring.capacity else "-"
        print(
            f"  place {place['place']:<3} {place['state']:<10} sender {sender:<16} "
            f"generation {place['generation']:<4} ring {ring.name} {ring.state} used {used} "
            f"unread {ring.frames_unread} held {ring.bytes_held} {ring.health}"
        )


def _cmd_gc(args: argparse.Namespace) -> int:
    """Remove buffers whose owners are provably dead; print what was removed."""
    from transports.admin import collect_garbage

    removed = collect_garbage(args.prefix)
    if args.json:
        print(json.dumps({"removed": removed}))
    else:
        for name in removed:
            print(f"removed {name}")
        print(f"{len(removed)} stale buffer(s) removed")
    return 0


def _add_buffers(sub: argparse._SubParsersAction[Any]) -> None:
    for name, func, text in (
        ("ls", _cmd_ls, "list ZeroBuffer buffers with peers, sizes, utilisation"),
        ("inspect", _cmd_inspect, "show one buffer, pool or fan-out: health and peers"),
        ("gc", _cmd_gc, "remove buffers whose reader and writer are provably dead"),
    ):
        parser = sub.add_parser(name, help=text, description=func.__doc__)
        if name == "inspect":
            parser.add_argument(
                "name", help="buffer, channel (pool) or fan-out name (as given to Receiver)"
            )
        else:
            parser.add_argument("--prefix", default="", help="only names starting with this")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=func)


def _cmd_demo(args: argparse.Namespace) -> int:
    """Two processes, 8 MiB and 100 MiB objects: checks and a table against Queue and pickle5."""
    from zcser.tools import demo as _demo

    return _demo.run(quick=args.quick, prefix=args.prefix)


def _add_demo(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "demo",
        help="zero-copy channel demo with peers (exit 1 on failure)",
        description=_cmd_demo.__doc__,
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--prefix", default=None, help="name prefix of the shared memory used")
    parser.set_defaults(func=_cmd_demo)


def _cmd_snapshot(args: argparse.Namespace) -> int:
    """`snapshot info PATH [--verify]` prints JSON; `snapshot clean DIR` removes stale temps."""
    if args.action == "clean":
        for stale in remove_stale_temp_files(args.path):
            print(f"removed {stale}")
        return 0
    try:
        info = snapshot_info(args.path)
        if args.verify:
            verify_file(args.path)
            info["checksum"]["verified"] = True
    except (ZcserError, OSError) as exc:
        print(f"zcser snapshot: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0


def _add_snapshot(sub: argparse._SubParsersAction[Any]) -> None:
    """Register `python -m zcser snapshot {info,clean}` on the main parser's subcommands."""
    parser = sub.add_parser("snapshot", help="inspect snapshot files, clean stale temp files")
    parser.add_argument("action", choices=["info", "clean"], help="info PATH | clean DIR")
    parser.add_argument("path", help="snapshot file (info) or directory (clean)")
    parser.add_argument("--verify", action="store_true", help="info: check every digest too")
    parser.set_defaults(func=_cmd_snapshot)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[Any]], None]] = [
    _add_bench,
    _add_snapshot,
    _add_buffers,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    """The `zcser` argument parser with every subcommand registered."""
    from zcser import __version__

    parser = argparse.ArgumentParser(
        prog="zcser",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zcser {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    snapshot = sub.choices["snapshot"]
    snapshot.description = _SNAPSHOT_DESCRIPTION
    snapshot.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `parser`, by name (for help checks and docs)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; an error of zcser or of the transports is
    printed as one line (exit status 1), not as a traceback."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (ZcserError, TransportError) as exc:
        print(f"zcser {args.command}: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
