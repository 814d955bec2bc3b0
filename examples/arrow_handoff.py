"""Arrow table handoff: a loader process builds tables, an analytics process queries them in place.

The loader sends `pyarrow.Table`s (integers, floats, strings, timestamps, a nullable column)
through a zcser channel; every Arrow buffer travels out of band, so the analytics side gets a
table whose column buffers are addresses inside shared memory (checked) and runs
`pyarrow.compute` group-bys on it without a copy. The same tables are then sent through a
`multiprocessing.Queue` (pickled Arrow IPC, copied twice) for comparison, in the same run.
Run: `python examples/arrow_handoff.py [--rows 1000000] [--tables 4]`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pyarrow as pa
from _shm_check import check, inside

import zcser

TIMEOUT = 60.0
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Accra", "Perth"]


def make_table(rows: int, seed: int) -> pa.Table:
    """A sales table: ids, city names, amounts, timestamps, and a column with nulls."""
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 30.0, rows)
    discount = pa.array(rng.random(rows), mask=rng.random(rows) < 0.1)
    return pa.table(
        {
            "order_id": np.arange(seed * rows, (seed + 1) * rows, dtype=np.int64),
            "city": pa.array(np.array(CITIES)[rng.integers(0, len(CITIES), rows)]),
            "amount": amount,
            "discount": discount,
            "ts": pa.array(
                rng.integers(1_700_000_000, 1_800_000_000, rows) * 10**9, pa.timestamp("ns")
            ),
        }
    )


def summary(table: pa.Table) -> dict[str, float]:
    """Revenue per city: the analytics query, run on whatever memory the table lives in."""
    grouped = table.group_by("city").aggregate([("amount", "sum")])
    return dict(zip(grouped["city"].to_pylist(), grouped["amount_sum"].to_pylist(), strict=True))


def loader(make_tx: zcser.SenderFactory, queue: Any, asks: Connection, rows: int) -> None:
    """Child: build the tables up front, then send table i through the channel or the Queue
    each time the analytics side asks for it (so every transfer is timed on its own)."""
    tables = int(asks.recv())
    built = [make_table(rows, seed) for seed in range(tables)]
    asks.send("ready")
    with make_tx() as tx:
        while (ask := asks.recv()) is not None:
            how, i = ask
            if how == "zcser":
                tx.send({"i": i, "table": built[i]})
            else:
                queue.put({"i": i, "table": built[i]})


def main() -> int:
    """Receive the tables both ways, query them, compare timings, check zero-copy by address."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per table")
    parser.add_argument("--tables", type=int, default=4, help="tables to send")
    parser.add_argument("--name", default=f"zcex-arrow-{os.getpid()}", help="channel name")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    nbytes = make_table(args.rows, 0).nbytes
    make_tx, rx = zcser.channel(args.name, capacity=4 * nbytes + (16 << 20))
    zc_times: list[float] = []
    q_times: list[float] = []
    results: list[dict[str, float]] = []
    with rx:
        asks, child = ctx.Pipe()
        proc: Any = ctx.Process(target=loader, args=(make_tx, queue, child, args.rows))
        proc.start()
        try:
            asks.send(args.tables)
            check(asks.poll(TIMEOUT) and asks.recv() == "ready", "the loader built its tables")
            for i in range(args.tables):
                start = time.monotonic()
                asks.send(("zcser", i))
                msg = rx.recv(timeout=TIMEOUT)
                table = msg["table"]
                zc_times.append(time.monotonic() - start)
                if i == 0:
                    column = table.column("amount").chunk(0)
                    where = inside(column.buffers()[1].address, f"/dev/shm/{args.name}")
                    if where is not None:
                        check(where, "'amount' values are read in the channel's shared memory")
                    strings = table.column("city").chunk(0).buffers()[2].address
                    if where is not None:
                        check(bool(inside(strings, f"/dev/shm/{args.name}")), "so are the strings")
                results.append(summary(table))
                del msg, table
            for i in range(args.tables):
                start = time.monotonic()
                asks.send(("queue", i))
                item = queue.get(timeout=TIMEOUT)
                q_times.append(time.monotonic() - start)
                check(summary(item["table"]) == results[i], f"table {i}: same answer both ways")
                del item
            asks.send(None)
        finally:
            proc.join(TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()
    check(proc.exitcode == 0, "the loader exited cleanly")
    expected = summary(make_table(args.rows, 0))
    check(results[0] == expected, "the query over shared memory gives the expected revenue")
    zc, q = statistics.median(zc_times) * 1e3, statistics.median(q_times) * 1e3
    print(f"{args.tables} tables of {args.rows:,} rows ({nbytes / 1e6:.0f} MB each)")
    print(f"ask -> table usable here, median: zcser {zc:.1f} ms, multiprocessing.Queue {q:.1f} ms")
    print("revenue by city:", {k: round(v) for k, v in sorted(results[0].items())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
