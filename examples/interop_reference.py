"""zcser messages through the ZeroBuffer protocol, read by the reference `zerobuffer-ipc` reader.

A child process runs the reference `zerobuffer.Reader` (it creates the buffer). This process
connects our `transports.zerobuffer.Writer`, puts the codec's stream schema in the metadata
block and writes each object as one zcser message straight into the reserved frame. The child
decodes every frame with `zcser.Codec().decode(frame.data)`: the arrays it gets are views of the
reference reader's shared memory (checked by address), so any ZeroBuffer implementation can
carry zcser messages. Needs `pip install 'zerobuffer-ipc[linux]==1.3.0'` (the `test` extra).
Run: `python examples/interop_reference.py [--frames 200] [--name NAME]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
from multiprocessing.connection import Connection

import numpy as np
import posix_ipc

import zcser
from transports.zerobuffer import Writer

SHAPE = (480, 640, 3)
TIMEOUT = 60.0


def make(i: int) -> dict[str, object]:
    """Message i: an image-sized array whose bytes depend on i, and a few small fields."""
    image = np.empty(SHAPE, np.uint8)
    image[...] = (np.arange(image.size, dtype=np.uint32).reshape(SHAPE) + 7 * i) % 251
    return {"frame_id": i, "image": image, "camera": "cam0", "exposure_ms": 8.5}


def remove_reference_leftovers(name: str) -> None:
    """The reference Reader.close() leaves both semaphores behind (its bug 5): remove them."""
    for sem in (f"/sem-w-{name}", f"/sem-r-{name}"):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(sem)


def reference_reader(name: str, frames: int, conn: Connection) -> None:
    """Child: create the buffer with the reference reader, decode and check every frame."""
    import zerobuffer

    codec = zcser.Codec()
    problems: list[str] = []
    zero_copy = 0
    try:
        with zerobuffer.Reader(name, zerobuffer.BufferConfig(4096, 16 << 20)) as reader:
            conn.send("ready")
            for i in range(frames):
                frame = reader.read_frame(timeout=TIMEOUT)
                if frame is None:
                    problems.append(f"frame {i}: timed out")
                    break
                if i == 0:
                    metadata = reader.get_metadata()
                    assert metadata is not None
                    codec.check_schema(json.loads(bytes(metadata)))
                obj = codec.decode(frame.data)
                if obj["frame_id"] != i or not np.array_equal(obj["image"], make(i)["image"]):
                    problems.append(f"frame {i}: wrong content")
                shm = np.frombuffer(frame.data, np.uint8)
                zero_copy += bool(np.shares_memory(obj["image"], shm))
                del obj, shm
                reader.release_frame(frame)
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        remove_reference_leftovers(name)
    conn.send({"problems": problems, "zero_copy": zero_copy})


def main() -> int:
    """Start the reference reader, write zcser messages into its buffer, report its checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50, help="messages to send (default 50)")
    parser.add_argument("--name", default=f"zcex-interop-{os.getpid()}", help="buffer name")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=reference_reader, args=(args.name, args.frames, child))
    proc.start()
    try:
        if not parent.poll(TIMEOUT) or parent.recv() != "ready":
            sys.exit("FAILED: the reference reader did not start")
        codec = zcser.Codec()
        with Writer(args.name, timeout=TIMEOUT) as writer:
            writer.set_metadata(json.dumps(codec.schema()).encode())
            for i in range(args.frames):
                plan = codec.plan(make(i))
                frame = writer.reserve(plan.nbytes)
                used = plan.write_into(frame, base_address=writer.reserved_address)
                del frame
                writer.commit(used)
        if not parent.poll(TIMEOUT):
            sys.exit("FAILED: the reference reader did not report")
        report = parent.recv()
    finally:
        proc.join(TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()
        remove_reference_leftovers(args.name)

    print(f"reference zerobuffer.Reader decoded {args.frames} zcser messages")
    print(f"  images viewed in place (np.shares_memory with frame.data): {report['zero_copy']}")
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    if report["problems"] or report["zero_copy"] != args.frames or proc.exitcode != 0:
        print("FAILED")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
