"""A writer rewrites a received Arrow frame in shared memory after the reader validated it: the
reader's values may change (strings may even become invalid UTF-8), but touching every element
must never crash it.

The reader is a real process holding the table it received through a zcser channel; the test
(the writer's side) finds the frame's offsets, dictionary indices and validity bitmaps in the
ring file under /dev/shm by their bytes and overwrites them with out-of-range values. The same
for a pandas DataFrame: MultiIndex codes, categorical codes, string offsets.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fixtures.procs import script

import zcser

ROWS = 4000
THRESHOLD = 64
CAPACITY = 4 << 20


def _table() -> pa.Table:
    """One column of each kind whose buffers index memory, each big enough to go out of band."""
    strs = [None if i % 11 == 3 else f"value-{i}" for i in range(ROWS)]
    lists = [None if i % 13 == 5 else list(range(i % 6)) for i in range(ROWS)]
    return pa.table(
        {
            "string": pa.array(strs, pa.string()),
            "large_string": pa.array([f"L{i}" for i in range(ROWS)], pa.large_string()),
            "binary": pa.array([b"b%d" % (i * 7) for i in range(ROWS)], pa.binary()),
            "list": pa.array(lists, pa.list_(pa.int32())),
            "large_list": pa.array(
                [[f"x{i}"] * (i % 3) for i in range(ROWS)], pa.large_list(pa.string())
            ),
            "map": pa.array(
                [[(f"k{i}", i)] for i in range(ROWS)], pa.map_(pa.string(), pa.int64())
            ),
            "dictionary": pa.array(
                [None if i % 7 == 2 else f"cat{i % 97}" for i in range(ROWS)]
            ).dictionary_encode(),
            "dictionary16": pa.DictionaryArray.from_arrays(
                pa.array([None if i % 5 == 1 else i % 300 for i in range(ROWS)], pa.int16()),
                pa.array([f"d{j}" for j in range(300)]),
            ),
            "struct": pa.array(
                [None if i % 9 == 4 else {"s": f"v{i}", "n": [i]} for i in range(ROWS)],
                pa.struct([("s", pa.string()), ("n", pa.list_(pa.int64()))]),
            ),
        }
    )


def _index_buffers(arr: pa.Array, indexes: bool = False) -> list[bytes]:
    """The bytes of every buffer of `arr` (and its children) that indexes memory: validity
    bitmaps, offsets, dictionary indices; only those big enough to travel out of band."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _index_buffers(arr.indices, indexes=True) + _index_buffers(arr.dictionary)
    bufs = arr.buffers()
    found = [bufs[0]]
    if indexes or any(
        check(t)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_list,
            pa.types.is_large_list,
            pa.types.is_map,
        )
    ):
        found.append(bufs[1])
    out = [b.to_pybytes() for b in found if b is not None and b.size >= THRESHOLD]
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            out += _index_buffers(arr.field(i))
    elif t.num_fields:
        out += _index_buffers(arr.values)
    return out


def _ring_file(name: str) -> Path:
    """The biggest file in /dev/shm whose name holds the channel name: the ring."""
    files = [p for p in Path("/dev/shm").iterdir() if name in p.name]
    return max(files, key=lambda p: p.stat().st_size)


READER = """
import sys
import pandas as pd
import pyarrow as pa, pyarrow.compute as pc
import zcser
rx = zcser.Receiver(NAME, capacity=CAPACITY, codec=zcser.Codec(threshold=THRESHOLD))
print("ready", flush=True)
obj = rx.recv()
print("got", len(obj), flush=True)
sys.stdin.readline()
def attempt(step):
    try:
        step()
    except (pa.ArrowException, ValueError):  # values may have changed (UnicodeDecodeError)
        pass
def touch_arrow(chunk):
    attempt(chunk.to_pylist)
    for i in range(len(chunk)):
        attempt(chunk[i].as_py)
    if pa.types.is_dictionary(chunk.type):
        attempt(lambda: chunk.dictionary_decode().to_pylist())
    attempt(lambda: chunk.take(pa.array(range(len(chunk)))).to_pylist())
    attempt(lambda: pc.is_null(chunk).to_pylist())
    if pa.types.is_string(chunk.type):
        attempt(lambda: pc.utf8_upper(chunk))
        attempt(lambda: pc.utf8_length(chunk))
        attempt(lambda: pc.sort_indices(chunk))
    return len(chunk)
touched = 0
if isinstance(obj, pa.Table):
    for column in obj.columns:
        for chunk in column.chunks:
            touched += touch_arrow(chunk)
    attempt(obj.to_pandas)
else:
    for name in obj.columns:
        column = obj[name]
        attempt(column.tolist)
        attempt(lambda: column.sort_values())
        attempt(lambda: column.value_counts())
        touched += len(column)
    index = obj.index
    for level in range(index.nlevels):
        attempt(lambda: index.get_level_values(level).tolist())
    attempt(lambda: index.tolist())
    attempt(lambda: obj.reset_index().to_dict())
    attempt(lambda: obj.groupby(level=0).size())
    attempt(lambda: repr(obj))
print("done", touched, flush=True)
del obj
rx.close()
"""


def _rewrite_after_receive(shm_name: str, obj: Any, needles: list[bytes], fills: list[int]) -> str:
    """Send `obj` to a reader process, then overwrite each of `needles` in the ring with the
    byte in `fills` at the same position; the reader touches every element. Returns what the
    reader said when done (it must exit 0)."""
    code = READER.replace("NAME", repr(shm_name)).replace("CAPACITY", str(CAPACITY))
    code = code.replace("THRESHOLD", str(THRESHOLD))
    with script(code, prelude="") as reader:
        reader.expect("ready")
        with zcser.Sender(shm_name, zcser.Codec(threshold=THRESHOLD)) as tx:
            tx.send(obj)
            assert reader.expect("got") == [str(len(obj))]
            fd = os.open(_ring_file(shm_name), os.O_RDWR)
            try:
                with mmap.mmap(fd, 0) as mm:
                    data = np.frombuffer(mm, np.uint8)
                    raw = mm[:]
                    for needle, fill in zip(needles, fills, strict=True):
                        at = raw.find(needle)
                        assert at >= 0, "a buffer of the frame was not found in the ring"
                        data[at : at + len(needle)] = fill
                    del data
            finally:
                os.close(fd)
            reader.send("touch")
            words = reader.expect("done", timeout=120)
            assert reader.wait() == 0, reader.stderr()
            return words[0]


@pytest.mark.parametrize("fill", [0x7F, 0xFF, 0x80])
def test_rewriting_offsets_indices_and_bitmaps_after_validation_never_crashes_the_reader(
    shm_name: str, fill: int
) -> None:
    table = _table()
    needles = [b for column in table.columns for b in _index_buffers(column.chunk(0))]
    assert len(needles) >= 15
    # offsets and indices out of range (0x7F: huge, 0xFF: -1, 0x80: most negative), bitmaps
    # saying valid (or not), and the bytes of one string column UTF-8 lead bytes without
    # their continuation: values may change, to invalid UTF-8 even
    fills = [fill] * len(needles) + [0xC3]
    needles.append(table.column("string").chunk(0).buffers()[2].to_pybytes())
    touched = _rewrite_after_receive(shm_name, table, needles, fills)
    assert int(touched) == table.num_rows * table.num_columns


def test_rewriting_codes_of_a_received_dataframe_never_crashes_the_reader(shm_name: str) -> None:
    index = pd.MultiIndex.from_arrays(
        [np.arange(ROWS) % 120, [f"k{i % 90}" for i in range(ROWS)]], names=["a", "b"]
    )
    frame = pd.DataFrame(
        {
            "x": np.arange(ROWS, dtype=np.float64),
            "cat": pd.Categorical([f"c{i % 100}" for i in range(ROWS)]),
            "s": pd.array([f"s{i}" for i in range(ROWS)], dtype=object),
        },
        index=index,
    )
    needles = [np.asarray(codes).tobytes() for codes in index.codes]
    for name in ("cat", "s"):
        arrow = pa.Table.from_pandas(frame[[name]].reset_index(drop=True), preserve_index=False)
        needles += _index_buffers(arrow.column(0).chunk(0))
    assert len(needles) >= 4
    touched = _rewrite_after_receive(shm_name, frame, needles, [0x7F] * len(needles))
    assert int(touched) == ROWS * 3
