"""One camera, three consumers: a zcser.Publisher writes each 1080p RGBA frame once into shared
memory; a recorder, a detector and a preview read it in place, each with its own policy.

- recorder, policy "block": lossless, the camera waits for it if it falls behind;
- detector, policy "drop": slow on purpose (`--slow-ms`); it misses frames and learns how many
  (`msg.missed`), while the camera and the others go on;
- preview, policy "latest": every 1/10 s it takes the newest frame and skips the rest.

The camera allocates each frame in shared memory with `pub.empty()` and fills it there: the
frame is never copied, not by the publisher and not by any subscriber (checked by address).
Run: `python examples/fanout_camera.py [--seconds 2] [--slow-ms 40]`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection

import numpy as np
from _shm_check import check, mapping_of

import zcser

SHAPE = (1080, 1920, 4)
FPS = 60
TIMEOUT = 60.0


def consumer(name: str, policy: str, delay: float, conn: Connection) -> None:
    """Receive until the camera closes; report (frames, missed, zero-copy, content ok, seqs)."""
    with zcser.Subscriber(name, policy=policy, timeout=TIMEOUT) as sub:
        span = mapping_of(f"/dev/shm/{name}")  # read now: the name goes when the camera closes
        conn.send("ready")
        frames = missed = 0
        zero_copy = content = True
        seqs = []
        while True:
            try:
                msg = sub.recv_message(timeout=TIMEOUT)
            except zcser.errors.Closed:
                break
            image = msg.value["image"]
            seq = msg.value["seq"]
            zero_copy &= span is None or span[0] <= image.ctypes.data < span[1]
            content &= bool(image[0, 0, 0] == seq % 251 and image[-1, -1, -1] == seq % 251)
            frames += 1
            missed += msg.missed
            seqs.append(seq)
            del image, msg
            if delay:
                time.sleep(delay)
        conn.send((frames, missed, zero_copy, content, seqs, sub.stats().missed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="how long the camera runs")
    parser.add_argument("--slow-ms", type=float, default=40.0, help="the detector's time per frame")
    parser.add_argument("--name", default=f"zcser-{os.getpid()}-fanout", help="shared memory name")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    roles = {
        "recorder": ("block", 0.0),
        "detector": ("drop", args.slow_ms / 1000),
        "preview": ("latest", 0.1),
    }
    nbytes = int(np.prod(SHAPE))
    with zcser.Publisher(args.name, capacity=16 * nbytes, subscribers=4) as pub:
        pipes = {}
        procs = []
        for role, (policy, delay) in roles.items():
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=consumer, args=(args.name, policy, delay, theirs), daemon=True)
            p.start()
            pipes[role] = mine
            procs.append(p)
        for mine in pipes.values():
            assert mine.poll(TIMEOUT) and mine.recv() == "ready"
        total = int(args.seconds * FPS)
        start = time.monotonic()
        for seq in range(total):
            delay = start + seq / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            image = pub.empty(SHAPE, np.uint8)  # in shared memory: the sensor writes it there
            image[...] = seq % 251
            pub.send({"seq": seq, "t": time.monotonic(), "image": image}, timeout=TIMEOUT)
        elapsed = time.monotonic() - start
        stats = pub.stats()
    results = {role: conn.recv() for role, conn in pipes.items() if conn.poll(TIMEOUT)}
    for p in procs:
        p.join(TIMEOUT)

    print(f"camera: {total} frames of {nbytes / 1e6:.1f} MB in {elapsed:.2f} s, each written once")
    for role, (frames, missed, *_) in results.items():
        print(f"  {role:<9} ({roles[role][0]:<6}) received {frames:4d}, missed {missed:4d}")
    check(len(results) == 3, "all three consumers reported")
    check(stats.zero_copy == total, "every frame was written in place (pub.empty), no copy")
    for role, (_, missed, zero_copy, content, seqs, stat_missed) in results.items():
        check(zero_copy, f"{role}: every frame was a view into the shared segment")
        check(content, f"{role}: every frame had the camera's pixels")
        check(seqs == sorted(seqs) and missed == stat_missed, f"{role}: in order, misses counted")
    frames, missed, *_ = results["recorder"]
    check(frames == total and missed == 0, "recorder (block) got every frame")
    frames, missed, *_ = results["detector"]
    check(frames + missed == total, "detector (drop): received + missed = frames published")
    frames, missed, _, _, seqs, _ = results["preview"]
    check(seqs[-1] == total - 1, "preview (latest) ended on the newest frame")


if __name__ == "__main__":
    main()
