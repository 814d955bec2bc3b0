"""A camera-like stream: 1080p RGBA frames at 60 fps, dropped (not queued) when the ring is full.

A producer process plays the camera: every 1/60 s it "captures" a 1920x1080x4 frame (8.3 MB)
and offers it with `send(msg, timeout=0)`. If the consumer is behind and the ring is full, that
raises `BufferFull` at once and the frame is dropped, so latency stays bounded instead of
growing with a queue. The consumer receives read-only views straight into shared memory,
checks each frame, and prints a latency histogram at the end (from capture, before the one copy
into the ring, to the moment the consumer holds the frame).
Run: `python examples/camera_stream.py [--seconds 2] [--slow-ms 0]` (`--slow-ms 30` makes
the consumer slower than the camera, to see frames dropped).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection

import numpy as np
from _shm_check import check, inside

import zcser

SHAPE = (1080, 1920, 4)
FPS = 60
TIMEOUT = 60.0


def camera(make_tx: zcser.SenderFactory, seconds: float, conn: Connection) -> None:
    """Producer: one frame every 1/FPS s; a frame that does not fit right now is dropped."""
    image = np.empty(SHAPE, np.uint8)
    sent = dropped = 0
    with make_tx() as tx:
        start = time.monotonic()
        for seq in range(int(seconds * FPS)):
            delay = start + seq / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            image[...] = seq % 251  # the sensor's work: every pixel written
            try:
                tx.send({"seq": seq, "t": time.monotonic(), "image": image}, timeout=0)
                sent += 1
            except zcser.errors.BufferFull:
                dropped += 1
    conn.send((sent, dropped))


def histogram(latencies_ms: list[float]) -> str:
    """A text histogram with doubling bucket widths, one '#' per 2% of frames."""
    edges = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
    counts = [0] * (len(edges) + 1)
    for x in latencies_ms:
        counts[next((i for i, e in enumerate(edges) if x < e), len(edges))] += 1
    lines = []
    low = 0.0
    for i, n in enumerate(counts):
        label = f"{low:>5g}-{edges[i]:<5g} ms" if i < len(edges) else f"{low:>5g}+       ms"
        if n:
            lines.append(f"  {label} {n:5d} {'#' * max(1, round(50 * n / len(latencies_ms)))}")
        low = edges[i] if i < len(edges) else low
    return "\n".join(lines)


def main() -> int:
    """Run the camera in a child process, consume here, report latency and drops."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="stream length (default 2)")
    parser.add_argument("--slow-ms", type=float, default=0.0, help="extra work per frame (ms)")
    parser.add_argument("--frames-in-ring", type=int, default=4, help="ring size in frames")
    parser.add_argument("--name", default=f"zcex-cam-{os.getpid()}", help="channel name")
    args = parser.parse_args()

    frame_bytes = int(np.prod(SHAPE))
    capacity = args.frames_in_ring * (frame_bytes + 64 * 1024)
    ctx = mp.get_context("spawn")
    make_tx, rx = zcser.channel(args.name, capacity=capacity)
    latencies: list[float] = []
    seqs: list[int] = []
    bad = 0
    in_shm = None
    writable = True
    brightness = float("nan")
    with rx:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=camera, args=(make_tx, args.seconds, child))
        proc.start()
        try:
            while True:
                try:
                    msg = rx.recv(timeout=TIMEOUT)
                except zcser.errors.Closed:
                    break
                latencies.append((time.monotonic() - msg["t"]) * 1e3)
                image = msg["image"]
                seqs.append(msg["seq"])
                expected = msg["seq"] % 251
                bad += int(image[0, 0, 0] != expected or image[-1, -1, -1] != expected)
                if in_shm is None:
                    in_shm = inside(image.ctypes.data, f"/dev/shm/{args.name}")
                    writable = image.flags.writeable
                brightness = float(image[::8, ::8, :3].mean())  # the consumer's work
                if args.slow_ms:
                    time.sleep(args.slow_ms / 1e3)
                del msg, image
            sent, dropped = parent.recv() if parent.poll(TIMEOUT) else (-1, -1)
        finally:
            proc.join(TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()

    print(f"{len(seqs)} frames received ({frame_bytes / 1e6:.1f} MB each), {dropped} dropped")
    print(f"last frame brightness {brightness:.1f}")
    check(bool(seqs), "frames were received")
    lat = sorted(latencies)
    print(
        f"latency ms: median {statistics.median(lat):.2f}  p90 {lat[int(0.9 * len(lat))]:.2f}  "
        f"p99 {lat[int(0.99 * len(lat))]:.2f}  max {lat[-1]:.2f}"
    )
    print(histogram(latencies))
    check(proc.exitcode == 0, "the camera process exited cleanly")
    check(sent == len(seqs), "every frame sent was received")
    check(sent + dropped == int(args.seconds * FPS), "every captured frame was sent or dropped")
    check(seqs == sorted(seqs), "frames arrive in order")
    check(bad == 0, "every frame has the content the camera wrote")
    check(not writable, "received images are read-only views")
    if in_shm is not None:
        check(in_shm, "received images live in the channel's shared memory (by address)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
