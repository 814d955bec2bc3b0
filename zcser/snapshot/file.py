"""Snapshot files: any object the codec handles, saved crash-safely, loaded as zero-copy views.

A file is a snapshot header (magic, version, the codec's stream schema, per-segment xxh3-64
digests) followed by one codec message whose buffers sit at 64-byte-aligned file offsets, so a
page-aligned mmap gives aligned views. Loading maps the file and decodes in time independent of
its size; the mapping lives until the last view of it is collected. POSIX only (see
docs/format.md, "Snapshot files").
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import xxhash

from transports.errors import SnapshotFileError, TransportError
from transports.mmapfile import AtomicWriter, open_mapping
from zcser.codec import Codec, default_codec
from zcser.codec import layout as message_layout
from zcser.errors import (
    CorruptData,
    CorruptSnapshot,
    IncompatibleStream,
    UnsupportedVersion,
    UsageError,
    ZcserError,
    translate,
)
from zcser.snapshot import refs
from zcser.snapshot.layout import (
    HEADER,
    MAGIC,
    MAX_META,
    MODES,
    VERSION,
    Header,
    Segment,
    _header_layout,
    pack_header,
    parse_header,
    verify_segments,
)

__all__ = ["load", "save", "snapshot_info", "verify_file"]

Mode = Literal["r", "c", "copy"]


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _progress_bar(total: int, path: str) -> Any:
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError as exc:
        raise UsageError(
            "save(progress=True) needs tqdm: pip install 'zcser[progress]' (or tqdm)"
        ) from exc
    name = os.path.basename(path)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"save {name}")


def _digests(pieces: list[tuple[int, memoryview]]) -> list[int]:
    """xxh3-64 of every piece (xxhash drops the GIL: this runs beside the writes)."""
    return [xxhash.xxh3_64_intdigest(view) for _, view in pieces]


def save(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    codec: Codec | None = None,
    checksum: bool = True,
    progress: bool = False,
) -> None:
    """Write `obj` to `path` as a snapshot: streamed from the source arrays, atomic, mode 0600.

    A crash at any moment leaves the old file or the new one under `path` (see mmapfile).
    checksum: store xxh3-64 digests of every segment (the head is checked on each load, every
    buffer with `load(verify=True)`). progress: show a tqdm bar.
    """
    path = _user_path(path)
    _refuse_odd_target(path)
    codec = codec or default_codec()
    plan = codec.plan(obj)
    meta = {"schema": codec.schema(), "root_type": _type_name(obj)}
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    _, msg_off = _header_layout(len(meta_bytes), 1 + len(plan.buffers))
    pieces = [(msg_off + off, view) for off, view in plan.segments(msg_off)]
    msg_len = plan.nbytes_at(msg_off)
    path = os.fspath(path)
    bar = _progress_bar(msg_off + msg_len, path) if progress else None
    try:
        with AtomicWriter(path, msg_off + msg_len) as writer, ThreadPoolExecutor(1) as pool:
            update = bar.update if bar is not None else None
            hashing = pool.submit(_digests, pieces) if checksum else None
            for off, view in pieces:
                writer.write_at(off, view, update)
            digests = hashing.result() if hashing is not None else [0] * len(pieces)
            segments = [
                Segment(off, view.nbytes, digest)
                for (off, view), digest in zip(pieces, digests, strict=True)
            ]
            header = pack_header(meta_bytes, segments, msg_off, msg_len, checksum)
            writer.write_at(0, memoryview(header), update)
            writer.commit()
    except TransportError as exc:  # the file layer's errors, in this package's words
        raise translate(exc) from exc
    finally:
        if bar is not None:
            bar.close()


def _parse_file(mv: memoryview, path: str) -> Header:
    try:
        return parse_header(mv)
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None


def load(
    path: str | os.PathLike[str],
    *,
    mode: Mode = "c",
    verify: bool = False,
    codec: Codec | None = None,
) -> Any:
    """The object saved in `path`, its arrays zero-copy views over a memory map of the file.

    mode "c" (default): writable views of a private copy-on-write map: pages are shared with
    the page cache until written, and writes never reach the file, so a loaded state_dict can
    be trained in place (`model.load_state_dict(zcser.load(path), assign=True)`). "r": read-only
    views of a read-only map; numpy and Arrow refuse writes, but torch has no read-only tensors
    and a write through one kills the process (SIGSEGV): loading tensors this way warns.
    "copy": writable views of a private in-memory copy of the file, which is closed (not
    mapped) on return. All modes give the same types; the memory lives until the last view is
    collected.
    verify: check the digest of every buffer (reads the whole file); the header and in-band
    bytes are always checked when the file has digests.
    """
    if mode not in MODES:
        raise UsageError(f'mode must be "r", "c" or "copy", got {mode!r}')
    codec = codec or default_codec()
    path = _user_path(path)
    mm, ident = _open(path, mode)
    obj = _decode(memoryview(mm), path, mode, verify, codec)
    if mode != "copy":
        refs.register_mapping(mm, path, mode, ident)
        refs.install()
    if mode == "r" and "torch" in sys.modules and _holds_tensor(obj):
        warnings.warn(
            f"zcser.load({path!r}, mode='r') maps the file read-only, and torch has no read-only "
            "tensors: writing into these tensors (an optimizer step, an in-place op) kills the "
            "process with SIGSEGV. Load with mode='c' (the default: private copy-on-write) to "
            "write into them, or clone() them first.",
            RuntimeWarning,
            stacklevel=2,
        )
    return obj


def _holds_tensor(obj: Any, budget: list[int] | None = None) -> bool:
    """Whether `obj` (dicts, lists, tuples, objects' attributes, at most 100k nodes) holds a
    torch tensor."""
    budget = budget if budget is not None else [100_000]
    budget[0] -= 1
    if budget[0] < 0:
        return False
    kind = type(obj)
    if kind.__module__.startswith("torch") and hasattr(obj, "data_ptr"):
        return True
    if isinstance(obj, dict):
        return any(_holds_tensor(v, budget) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensor(v, budget) for v in obj)
    attrs = getattr(obj, "__dict__", None)
    return isinstance(attrs, dict) and any(_holds_tensor(v, budget) for v in attrs.values())


def _user_path(path: Any) -> str:
    """`path` as a str (UsageError for anything that is not a str, bytes or os.PathLike)."""
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        raise UsageError(f"a snapshot path must be a str or os.PathLike, not {path!r}") from None
    if not text:
        raise UsageError("a snapshot path must not be empty")
    return text


def _refuse_odd_target(path: str) -> None:
    """UsageError unless `path` is missing or a regular file: save replaces the file at the
    path by renaming over it, which would turn a FIFO, a device, a symlink or a directory into
    a snapshot."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot save to {path!r}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UsageError(
            f"cannot save to {path!r}: it is {kind} (save replaces a regular file or creates "
            "one; pass the path of a file)"
        )


def _open(path: str, mode: Mode) -> tuple[Any, refs.Identity]:
    """The file's mapping (or private copy) and the file's identity (refs.py); its errors
    become CorruptSnapshot naming the file. A private copy reads the whole file, so its header
    is checked against the file first."""
    seen: list[refs.Identity] = []

    def check(fd: int, size: int) -> None:
        if mode == "copy":
            _check_head(fd, size, path)
        seen.append(refs.identity_of(fd, os.pread(fd, HEADER.size, 0).ljust(HEADER.size, b"\0")))

    try:
        return open_mapping(path, mode, check=check), seen[0]
    except SnapshotFileError as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None


def _check_head(fd: int, size: int, path: str) -> None:
    """The fixed header read alone (pread): magic, version, and the sizes it declares against
    the file's `size`, so a file that is no snapshot, or not the one its header describes, is
    refused before it is read (parse_header checks the rest on the copy)."""
    fixed = os.pread(fd, HEADER.size, 0)
    if len(fixed) < HEADER.size or fixed[: len(MAGIC)] != MAGIC:
        _parse_file(memoryview(fixed), path)  # raises "truncated" or "not a zcser snapshot"
    _, version, _, header_len, msg_off, msg_len, file_len, meta_len, count, _, _ = HEADER.unpack(
        fixed
    )
    if version != VERSION:
        _parse_file(memoryview(fixed), path)  # raises UnsupportedVersion with its advice
    if file_len != size:
        raise CorruptSnapshot(
            f"{path}: truncated or extended: the file has {size} bytes, its header says "
            f"{file_len}; restore it from a good copy"
        )
    if meta_len > MAX_META or header_len != _header_layout(meta_len, count)[0]:
        raise CorruptSnapshot(f"{path}: bad header length {header_len} (metadata {meta_len} bytes)")
    if header_len > size or msg_off + msg_len != file_len:
        raise CorruptSnapshot(f"{path}: message [{msg_off}, +{msg_len}) does not fit the file")


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[tuple[memoryview, Header]]:
    """The file mapped read-only with its parsed header, for inspection; unmapped at the end."""
    mm, _ = _open(path, "r")
    mv = memoryview(mm)
    try:
        yield mv, _parse_file(mv, path)
    finally:
        mv.release()
        mm.close()


def _verify(mv: memoryview, header: Header, segments: list[Segment], path: str) -> None:
    """verify_segments, with the file named in the error."""
    try:
        verify_segments(mv, header, segments)
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None


def _decode(mv: memoryview, path: str, mode: Mode, verify: bool, codec: Codec) -> Any:
    header = _parse_file(mv, path)
    codec.check_schema(header.meta["schema"])
    _verify(mv, header, header.segments if verify else header.segments[:1], path)
    message = mv[header.message_offset : header.file_len]
    try:
        return codec.decode(message, writable=mode != "r")
    except (UnsupportedVersion, IncompatibleStream):
        raise
    except CorruptData as exc:
        raise CorruptSnapshot(f"{path}: {type(exc).__name__}: {exc}") from exc


_DESCRIBE_MAX = 10_000  # arrays listed by snapshot_info at most


def _describe(obj: Any, name: str, out: list[dict[str, Any]], depth: int = 0) -> None:
    """Append {name, type, dtype, shape, nbytes} for every array-like in `obj` (dict keys and
    attribute names joined with '.', sequence indices as [i])."""
    if len(out) >= _DESCRIBE_MAX or depth > 64:
        return
    kind = type(obj)
    shape = getattr(obj, "shape", None)
    dtype = getattr(obj, "dtype", None)
    if shape is not None and dtype is not None and not isinstance(obj, type):
        nbytes = getattr(obj, "nbytes", None)
        if nbytes is None and hasattr(obj, "element_size"):  # torch
            nbytes = obj.element_size() * obj.numel()
        out.append(
            {
                "name": name,
                "type": f"{kind.__module__.split('.')[0]}.{kind.__name__}",
                "dtype": str(dtype),
                "shape": [int(d) for d in shape],
                "nbytes": None if nbytes is None else int(nbytes),
            }
        )
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _describe(value, f"{name}.{key}" if name else str(key), out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _describe(value, f"{name}[{i}]", out, depth + 1)
    elif isinstance(obj, (bytes, bytearray, memoryview)) and len(obj) >= 1024:
        out.append({"name": name, "type": kind.__name__, "dtype": None, "shape": None,
                    "nbytes": memoryview(obj).nbytes})  # fmt: skip
    elif hasattr(obj, "num_rows") or hasattr(obj, "null_count"):  # Arrow tables and arrays
        out.append({"name": name, "type": f"pyarrow.{kind.__name__}",
                    "dtype": str(getattr(obj, "type", getattr(obj, "schema", ""))),
                    "shape": [len(obj)], "nbytes": int(obj.nbytes)})  # fmt: skip


def snapshot_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a snapshot holds: versions, sizes, layout from its headers, and every array it holds
    (name, dtype, shape, bytes) from a zero-copy decode with the default codec (`arrays` is
    None, with `arrays_error` saying why, when that codec cannot decode it)."""
    path = _user_path(path)
    with _mapped(path) as (mv, header):
        message = mv[header.message_offset : header.file_len]
        try:
            msg = message_layout.parse(message)
        except CorruptData as exc:
            raise CorruptSnapshot(f"{path}: {exc}") from exc
        finally:
            message.release()
    base = header.message_offset
    found: list[dict[str, Any]] = []
    arrays: list[dict[str, Any]] | None = found
    arrays_error = None
    try:
        _describe(load(path, verify=False), "", found)
    except ZcserError as exc:
        arrays, arrays_error = None, f"{type(exc).__name__}: {exc}"
    return {
        "path": path,
        "format_version": header.version,
        "file_size": header.file_len,
        "header_size": header.header_len,
        "message_offset": base,
        "message_size": header.message_len,
        "message_format_version": message_layout.VERSION,
        "inband_size": msg.inband_end - msg.inband_start,
        "root_type": header.meta.get("root_type"),
        "schema": header.meta["schema"],
        "buffers": [{"offset": base + off, "length": n} for off, n in msg.buffers],
        "checksum": {
            "algorithm": header.algorithm,
            "segments": len(header.segments) if header.algorithm else 0,
            "message_digests": msg.checksum,
        },
        "arrays": arrays,
        "arrays_error": arrays_error,
    }


def verify_file(path: str | os.PathLike[str]) -> None:
    """Check the header and every segment digest of a snapshot without decoding it."""
    path = os.fspath(path)
    with _mapped(path) as (mv, header):
        if header.algorithm is None:
            raise CorruptSnapshot(f"{path}: saved with checksum=False, nothing to verify")
        _verify(mv, header, header.segments, path)
