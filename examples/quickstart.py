"""zcser quickstart: send objects holding arrays from a producer process to this one.

Checks what it shows (values, zero-copy by address, cleanup) and exits non-zero if a check fails.
Run: python examples/quickstart.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp

import numpy as np
from _shm_check import check, inside

import zcser

TIMEOUT = 30.0


def producer(make_sender: zcser.SenderFactory) -> None:
    """Runs in another process: connects to the channel and sends three messages."""
    with make_sender() as tx:
        # 1. A copying send: the array is copied once, into shared memory.
        tx.send({"weights": np.arange(1_000_000, dtype=np.float32), "step": 1})
        # 2. A zero-copy send: allocate the array inside the next message, fill it, send it.
        frame = tx.empty((480, 640, 3), np.uint8)
        frame[:] = 200
        tx.send({"frame": frame, "t": 0.04, "camera": "left"})
        # 3. Anything the codec knows: nested containers, strings, numbers, bytes.
        tx.send({"labels": ["cat", "dog"], "scores": [0.9, 0.1], "raw": b"\x00" * 100_000})
    # Leaving the `with` block closes the sender: the receiver then gets zcser.errors.Closed.


def main() -> int:
    """Start the producer, receive its three messages here and check them."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    make_sender, rx = zcser.channel(capacity=64 << 20)  # this process creates and reads
    shm = f"/dev/shm/{rx.name}"
    with rx:
        proc = mp.get_context("spawn").Process(target=producer, args=(make_sender,))
        proc.start()

        first = rx.recv(timeout=TIMEOUT)  # arrays are read-only views into shared memory
        weights = first["weights"]
        print("weights", weights[:3], "writeable:", weights.flags.writeable)
        check(np.array_equal(weights, np.arange(1_000_000, dtype=np.float32)), "weights arrive")
        check(not weights.flags.writeable, "received arrays are read-only views")
        check(inside(weights.ctypes.data, shm) is not False, "weights live in shared memory")

        with rx.recv_message(timeout=TIMEOUT) as msg:  # explicit lifetime: freed at the end
            frame = msg.value["frame"]
            print("frame", frame.shape, frame.dtype, int(frame.mean()), msg.value["camera"])
            check(frame.shape == (480, 640, 3) and bool((frame == 200).all()), "frame arrives")
            check(inside(frame.ctypes.data, shm) is not False, "frame is read in place")
            del frame  # views must be gone before the block ends (else BufferError)

        third = rx.recv(timeout=TIMEOUT, copy=True)  # private, writable copies; frame freed at once
        print("labels", third["labels"], "raw bytes", len(third["raw"]))
        check(third["labels"] == ["cat", "dog"] and third["raw"] == bytes(100_000), "copy arrives")

        print("pinned frames (held by `first`):", rx.stats().frames_pinned)
        del first, weights
        print("pinned frames after del:", rx.stats().frames_pinned)
        check(rx.stats().frames_pinned == 0, "dropping the views frees their frames")
        try:
            rx.recv(timeout=TIMEOUT)
            check(False, "the producer closed the channel")
        except zcser.errors.Closed:
            print("producer closed the channel")
        proc.join(TIMEOUT)
        check(proc.exitcode == 0, "the producer exited cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
