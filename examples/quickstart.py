"""zcser quickstart: send objects holding arrays from a producer process to this one.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

import zcser


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


def main() -> None:
    make_sender, rx = zcser.channel(capacity=64 << 20)  # this process creates and reads
    with rx:
        proc = mp.get_context("spawn").Process(target=producer, args=(make_sender,))
        proc.start()

        first = rx.recv(timeout=30)  # arrays are read-only views into shared memory
        print("weights", first["weights"][:3], "writeable:", first["weights"].flags.writeable)

        with rx.recv_message(timeout=30) as msg:  # explicit lifetime: freed at the end
            frame = msg.value["frame"]
            print("frame", frame.shape, frame.dtype, int(frame.mean()), msg.value["camera"])
            del frame  # views must be gone before the block ends (else BufferError)

        third = rx.recv(timeout=30, copy=True)  # private, writable copies; frame freed at once
        print("labels", third["labels"], "raw bytes", len(third["raw"]))

        print("pinned frames (held by `first`):", rx.stats().frames_pinned)
        del first
        print("pinned frames after del:", rx.stats().frames_pinned)
        try:
            rx.recv(timeout=30)
        except zcser.errors.Closed:
            print("producer closed the channel")
        proc.join(30)


if __name__ == "__main__":
    main()
