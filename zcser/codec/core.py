"""The Codec: one pyfory.Fory configured for out-of-band buffers, plus the message framing.

Encoding serializes once (`plan`), then writes header, table, in-band bytes and every large
buffer at a 64-byte-aligned absolute address (`Plan.write_into`). Decoding validates the whole
header and table first, then hands pyfory zero-copy slices of one read-only root view.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import struct
import sys
import types
import warnings
from collections import OrderedDict
from operator import length_hint
from typing import Any

import numpy as np
import pyarrow as pa
import pyfory
import xxhash
from pyfory.error import TypeUnregisteredError
from pyfory.meta.typedef import BIG_NAME_THRESHOLD as _NAME_LIMIT
from pyfory.meta.typedef import NAMESPACE_ENCODINGS as _NAMESPACE_ENCODINGS
from pyfory.meta.typedef import TYPE_NAME_ENCODINGS as _TYPE_NAME_ENCODINGS
from pyfory.meta.typedef_encoder import NAMESPACE_ENCODER as _NAMESPACE_ENCODER
from pyfory.meta.typedef_encoder import TYPENAME_ENCODER as _TYPENAME_ENCODER
from pyfory.policy import DeserializationPolicy
from pyfory.serializer import ObjectSerializer

from zcser.codec import adapters as _adapters
from zcser.codec import layout as _message
from zcser.codec import memory as _copy
from zcser.codec import oob as _oob
from zcser.codec.adapters import numpy as _numpy
from zcser.codec.memory import address as _address
from zcser.codec.plan import Plan, _byte_view, _meta_digest
from zcser.errors import (
    ChecksumMismatch,
    CorruptMessage,
    DecodeError,
    IncompatibleStream,
    UnregisteredType,
    UnsupportedType,
    UsageError,
    ZcserError,
)

FORMAT_NAME = "zcser-message"
CODEC_NAME = "zcser"
CODEC_VERSION = "0.1.0"
"""The message format's version, written into every stream schema and snapshot (not the package
version, which is `zcser.__version__`)."""

# Measured with `python -m zcser bench` (section "codec-threshold"): below ~16 KiB the per-buffer
# cost of going out of band (table entry, alignment padding, one memoryview slice and pyfory's
# callback on each side) exceeds the cost of copying the bytes in band.
DEFAULT_THRESHOLD = 16 * 1024
"""Bytes: smaller buffers are copied in band, larger ones travel out of band (zero-copy)."""

MAX_NESTING = 100
"""Containers (dict, list, tuple, set, frozenset, OrderedDict, object arrays, registered
classes) nested inside each other at most this deep: deeper objects are refused at encode
(UnsupportedType), and decoders accept exactly what encoders send (pyfory counts up to two
read levels per container, so its max_depth is set to twice this, plus slack)."""
_MAX_READ_DEPTH = 2 * MAX_NESTING + 2
_MIN_LEVEL_BYTES = 2
"""In-band bytes each nesting level takes at least (a reference flag and a type id): a message
with fewer than MAX_NESTING times this cannot be too deep, and skips the check."""
_CHECK_NESTING_ABOVE = _MIN_LEVEL_BYTES * MAX_NESTING
_NESTING = frozenset((dict, OrderedDict, list, tuple, set, frozenset))

_HEADER_SIZE = _message.HEADER.size
_TABLE_START = _message.TABLE_START
_MAGIC = _message.MAGIC
_VERSION = _message.VERSION
_unpack_header = _message.HEADER.unpack_from
_pack_header = _message.HEADER.pack
# The header read as four u64 (little endian) by decode_small:
#   word    magic, version, flags          == _PLAIN_WORD (flags 0: no checksum)
#   zero    buffer count, reserved         == 0 (no out-of-band buffer)
#   inband  in-band length
#   total   total length                   == 32 + inband == the size of the bytes given
_unpack_plain = struct.Struct("<QQQQ").unpack_from
_PLAIN_WORD = struct.unpack_from("<Q", _pack_header(_MAGIC, _VERSION, 0, 0, 0, 0, 0))[0]
_NO_BUFFERS: tuple[Any, ...] = ()
_Buffer = pyfory.Buffer
_KIND = 2
"""Where pyfory's root (bitmap, reference flag, type id) has its type id: the byte that tells a
top-level bytes object from the rest at a glance."""
_KIND_AT = _TABLE_START + _KIND
_inline_below = _oob.INLINE_BELOW.get
_set_inline_below = _oob.INLINE_BELOW.set
_begin_decode = _oob.begin_decode
_end_decode = _oob.end_decode
_get_state = _oob.get_state
_object_arrays = _numpy.OBJECT_ARRAYS
_set_state = _oob.set_state


def _aligned_copy(mv: memoryview, phase: int, writable: bool = False) -> memoryview:
    """A copy of `mv` in fresh memory where offset `phase` is aligned; read-only unless asked."""
    raw = np.empty(mv.nbytes + _message.ALIGN, dtype=np.uint8)
    skip = (phase - raw.ctypes.data) % _message.ALIGN
    dst = raw[skip : skip + mv.nbytes]
    _copy.copy_into(dst.data, mv.cast("B") if mv.format != "B" else mv, _copy.default_threads())
    return dst.data if writable else dst.data.toreadonly()


_BUILTIN_TYPES = frozenset(
    (int, float, bool, str, bytes, bytearray, list, tuple, dict, set, frozenset, type(None))
)

_LAZY_MODULES = ("torch", "pandas")


def _lazy_modules_imported() -> frozenset[str]:
    return frozenset(m for m in _LAZY_MODULES if m in sys.modules)


class _Collector:
    """pyfory's buffer_callback: buffers under `threshold` stay in band, the rest go to `buffers`
    while `busy`. One per codec, reused, and so is its list while it stays empty (most
    messages): a closure or a list per message shows in small-message rates."""

    __slots__ = ("buffers", "busy", "threshold")

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []
        self.busy = False
        self.threshold = 0

    def __call__(self, buffer_object: Any) -> bool:
        assert self.busy
        buffers = self.buffers
        if type(buffer_object) is _oob.RawBuffer:  # our adapters': already a byte view
            view = buffer_object.view
            if view.nbytes < self.threshold or not view.nbytes:
                return True
            buffers.append(view)
            return False
        size = buffer_object.total_bytes()
        if size == 0 or size < self.threshold:
            return True
        buffers.append(_oob.as_bytes_view(buffer_object.getbuffer()))
        return False


class Codec:
    """Encode objects to zcser messages and decode them back as zero-copy views.

    threshold: buffers smaller than this many bytes stay in band (copied); 0-byte ones always.
    trusted: WARNING, True lets messages build any importable class (like pickle: a malicious
        message can run code). Only for data from peers you trust. Default strict mode accepts
        only built-in and registered types.
    checksum: store xxh3-64 digests of in-band bytes and every buffer, and require them on
        decode (a corrupted message raises ChecksumMismatch instead of decoding wrongly).
    ref: track shared references (an object held twice travels once, identity is kept).
    decode_allowance: bytes a decode may allocate beyond the size of the message itself, for
        objects built from counts the message declares rather than carries (a hostile message
        of a few bytes cannot make the decoder allocate gigabytes). Such a decode raises
        CorruptMessage; raise the allowance for trusted data that needs more.
    A Codec is not thread-safe (it holds one pyfory.Fory): use one per thread.
    """

    def __init__(
        self,
        threshold: int = DEFAULT_THRESHOLD,
        trusted: bool = False,
        checksum: bool = False,
        ref: bool = False,
        decode_allowance: int = _oob.DEFAULT_ALLOWANCE,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise UsageError(f"threshold must be an int >= 0 bytes, got {threshold!r}")
        if type(decode_allowance) is not int or decode_allowance < 0:
            raise UsageError(
                f"decode_allowance must be an int >= 0 bytes, got {decode_allowance!r}"
            )
        if trusted:
            warnings.warn(
                "zcser.Codec(trusted=True) decodes like pickle: a crafted message can run "
                "arbitrary code. Use it only with peers you trust.",
                stacklevel=2,
            )
        self.threshold = threshold
        self.trusted = trusted
        self.checksum = checksum
        self.ref = ref
        self.decode_allowance = decode_allowance
        self._state = _oob.DecodeState()
        self._types: dict[str, type] = {}
        self._adapters: list[str] = []
        self._collect = _Collector()
        self._fory = self._build()

    def _build(self) -> Any:
        """A configured pyfory.Fory: adapters installed, registered classes replayed."""
        self._policy = None if self.trusted else _DeclaredFieldsOnly()
        fory = pyfory.Fory(
            xlang=False,
            ref=self.ref,
            strict=not self.trusted,
            policy=self._policy,
            max_depth=_MAX_READ_DEPTH,
        )
        adapters = []
        for module in _adapters.installed():
            module.install(fory)
            adapters.append(module.NAME)
        for type_name, cls in self._types.items():
            _register_class(fory, cls, type_name)
            if self._policy is not None:
                self._policy.add(cls)
        self._adapters = adapters
        self._cache_nesting()
        self._types_info: dict[Any, Any] = fory.type_resolver._types_info
        self._known_types = len(self._types_info)
        self._lazy_seen = _lazy_modules_imported()
        self._used = False
        self._bytes_prefix: bytes | None = None  # found by _probe_bytes when first needed
        self._bytes_kind: int | None = None  # its type id byte (-1: no shortcut), likewise
        # decode_small: message size -> the head (header, prefix, length) of a bytes object
        # of that size that it checked in full once; the same head again needs no re-check
        self._small_heads: dict[int, bytes] = {}
        return fory

    def _late_imports(self) -> bool:
        """Rebuild if torch/pandas were imported after this codec was made (their real classes
        can only be aliased once imported); True when that happened and a retry makes sense."""
        if _lazy_modules_imported() == self._lazy_seen:
            return False
        self._fory = self._build()
        return True

    def register(self, cls: type, *, name: str | None = None) -> None:
        """Allow `cls` (dataclass or plain class) in strict mode, on writer and reader alike.

        Types are matched across processes by `name` (default `module.QualName`), so the
        reader must register the same classes under the same names, in any order. Enum
        classes travel by member name and come back as the reader's own members.
        """
        if not isinstance(cls, type):
            raise UsageError(f"register() takes a class, got {type(cls).__name__}")
        name = name or f"{cls.__module__}.{cls.__qualname__}"
        _check_name(name)
        if name in self._types:
            raise UsageError(f"a class is already registered under the name {name!r}")
        if cls in self._types.values() or cls in _BUILTIN_TYPES:
            raise UsageError(
                f"{cls.__qualname__} is already known to this codec (registered, or built in): "
                "register each class once"
            )
        self._types[name] = cls
        if self._used:
            self._fory = self._build()
        else:
            _register_class(self._fory, cls, name)
            if self._policy is not None:
                self._policy.add(cls)
            self._cache_nesting()
            self._known_types = len(self._types_info)

    def pack(self, obj: Any) -> bytes | Plan:
        """Serialize `obj`: the whole message as bytes when it has no out-of-band buffer (its
        bytes then do not depend on where they land), else the Plan to write it with."""
        if type(obj) is bytes and len(obj) < self.threshold and not self.checksum:
            prefix = self._bytes_prefix
            if prefix is None:
                prefix = self._probe_bytes()
            if prefix:
                # The bytes pyfory writes for it, without running it (see _probe_bytes).
                n = len(obj)
                heads = self._bytes_heads
                head = heads.get(n)
                if head is None:
                    head = prefix + _varuint(n)
                    m = len(head) + n
                    head = _pack_header(_MAGIC, _VERSION, 0, 0, 0, m, _TABLE_START + m) + head
                    if len(heads) < _BYTES_HEADS:
                        heads[n] = head
                self._used = True
                return head + obj
        inband, buffers = self._serialize(obj)
        if buffers or self.checksum:
            plan = Plan(inband, buffers, self.checksum)
            return plan if buffers else plan.packed()
        head = _PLAIN_HEADS.get(len(inband))
        if head is None:
            head = _plain_head(len(inband))
        return head + inband

    def _probe_bytes(self) -> bytes:
        """What pyfory writes before the length of a top-level bytes object kept in band (its
        header, reference flag, type id and in-band mark), checked to be followed by exactly
        the LEB128 length and the bytes for two lengths; b"" (no shortcut) when it is not.
        `pack` then writes small bytes objects itself and `decode_small` reads back exactly
        what it writes, byte for byte; anything else takes pyfory's path."""
        self._bytes_prefix = b""
        self._bytes_kind = -1
        self._bytes_heads: dict[int, bytes] = {}
        if self.threshold < 2 or self.checksum:
            return b""
        one, buffers = self._serialize(b"\xab")
        if buffers or not one.endswith(b"\x01\xab"):
            return b""
        prefix = one[:-2]
        n = min(self.threshold - 1, 300)
        probe = bytes(range(256)) + bytes(n - 256) if n > 256 else bytes(range(n))
        inband, buffers = self._serialize(probe)
        if buffers or inband != prefix + _varuint(n) + probe:
            return b""
        self._bytes_prefix = prefix
        self._bytes_kind = prefix[_KIND] if len(prefix) > _KIND else -1
        return prefix

    def plan(self, obj: Any) -> Plan:
        """Serialize `obj` once: in-band bytes plus the out-of-band buffers (no data copied)."""
        inband, buffers = self._serialize(obj)
        return Plan(inband, buffers, self.checksum)

    def _serialize(self, obj: Any) -> tuple[bytes, list[memoryview]]:
        """pyfory's in-band bytes and the buffers its callback took out of band."""
        collect = self._collect
        if collect.busy:  # a serializer called this codec again: a fresh one
            collect = _Collector()
        buffers = collect.buffers  # empty: a list that took buffers left with its message
        collect.busy = True
        collect.threshold = threshold = self.threshold
        self._used = True
        if _inline_below() != threshold:
            _set_inline_below(threshold)
        object_arrays = _object_arrays[0]
        try:
            inband = self._fory.serialize(obj, buffer_callback=collect)
        except Exception as exc:
            self._serialize_failed(exc, obj)  # raises, or returns when a retry makes sense
            inband = None
        finally:
            collect.busy = False
            if buffers:  # the list leaves with the message (or with its failure)
                collect.buffers = []
        if inband is None:
            return self._serialize(obj)
        if len(self._types_info) != self._known_types:
            self._check_new_types()
        if len(inband) > _CHECK_NESTING_ABOVE:
            self._check_nesting(obj, _object_arrays[0] != object_arrays)
        return inband, buffers  # pyfory returns bytes: bytes() would only add a call

    def _serialize_failed(self, exc: Exception, obj: Any) -> None:
        """pyfory's serialize of `obj` raised `exc`: raise it in zcser's error tree, or return
        (the caller tries again) when torch or pandas were imported since this codec was built."""
        if isinstance(exc, ZcserError):
            raise exc
        if isinstance(exc, TypeUnregisteredError):
            if self._late_imports():
                return
            raise UnregisteredType(_unregistered_advice(exc)) from exc
        raise UnsupportedType(
            f"cannot serialize {type(obj).__name__}: {type(exc).__name__}: {exc}"
        ) from exc

    def _check_nesting(self, obj: Any, object_arrays: bool) -> None:
        """UnsupportedType when `obj` nests containers deeper than MAX_NESTING (which no
        reader would decode). Walks level by level, containers only (arrays only when object
        arrays were written); the elements of flat containers are passed over in C."""
        registered = self._registered_plain
        nesting = self._nesting_with_arrays if object_arrays else self._nesting
        seen: set[int] | None = set() if self.ref else None
        level = [obj]
        for depth in range(1, MAX_NESTING + 2):
            below: list[Any] = []
            for value in level:
                kind = type(value)
                items: Any
                if kind is dict or kind is OrderedDict:
                    if not nesting.isdisjoint(map(type, value)):
                        below += [key for key in value if type(key) in nesting]
                    items = value.values()
                elif kind is list or kind is tuple or kind is set or kind is frozenset:
                    items = value
                elif kind is np.ndarray:
                    if value.dtype != object:
                        continue
                    items = value.reshape(-1)
                elif kind in registered:
                    state = getattr(value, "__dict__", None)
                    items = [] if state is None else list(state.values())
                    items += [getattr(value, slot, None) for slot in _slot_names(kind)]
                else:
                    continue
                if seen is not None:
                    if id(value) in seen:
                        continue
                    seen.add(id(value))
                if depth > MAX_NESTING:
                    raise UnsupportedType(
                        f"the object nests containers more than {MAX_NESTING} levels deep "
                        "(dicts, lists, tuples, sets, object arrays and registered classes "
                        "inside each other), which no zcser reader decodes: flatten it"
                    )
                if not nesting.isdisjoint(map(type, items)):
                    below += [item for item in items if type(item) in nesting]
            if not below:
                return
            level = below

    def _cache_nesting(self) -> None:
        """The types `_check_nesting` walks into: containers and registered plain classes."""
        self._registered_plain = frozenset(
            cls for cls in self._types.values() if not issubclass(cls, enum.Enum)
        )
        self._nesting = _NESTING | self._registered_plain
        self._nesting_with_arrays = self._nesting | {np.ndarray}

    def _check_new_types(self) -> None:
        """pyfory's strict mode writes an unregistered Enum by name, which no strict reader can
        decode: refuse it here, where the writer can still register it."""
        known = set(self._types.values())
        for cls in list(self._types_info)[self._known_types :]:
            if (
                not self.trusted
                and isinstance(cls, type)
                and issubclass(cls, enum.Enum)
                and cls not in known
            ):
                self._fory = self._build()  # forget the class pyfory took on by itself
                raise UnregisteredType(
                    f"enum {cls.__module__}.{cls.__qualname__} is not registered: call "
                    f"codec.register({cls.__qualname__}) on the writer and the reader"
                )
        self._known_types = len(self._types_info)

    def message_size(self, obj: Any) -> int:
        """Upper bound of the message size of `obj` (serializes it; prefer `plan` to reuse)."""
        return self.plan(obj).nbytes

    def encode_into(self, obj: Any, target: Any) -> int:
        """Write one message for `obj` at the start of `target`; returns the bytes used."""
        return self.plan(obj).write_into(target)

    def decode(
        self, data: Any, *, copy: bool = False, owner: Any = None, writable: bool = False
    ) -> Any:
        """The object in the message at the start of `data`.

        Without copy, arrays/buffers are read-only zero-copy views into `data`; with `owner`,
        every view keeps `owner` alive (the channel passes its frame lease). If the buffers
        would be misaligned at this address, the message is first copied to aligned memory.
        copy=True returns private writable objects. writable=True keeps zero-copy views over
        writable `data` writable (snapshot copy-on-write maps; no `owner`: views keep `data`).
        """
        if writable and owner is not None:
            raise UsageError("decode(writable=True) keeps `data` alive itself: pass no owner")
        mv = _byte_view(data)
        if not mv.readonly and not writable:
            mv = mv.toreadonly()
        msg = _message.parse(mv)
        if self.checksum:
            self._check_checksum_flag(msg)
        if not msg.buffers:
            return self._deserialize(msg, mv, [], copy, writable, msg.total)
        root = mv[: msg.total]
        if owner is not None and msg.total:
            root = _owned_view(root, owner)
        if msg.buffers:
            phase = msg.buffers[0][0] % _message.ALIGN
            if (_address(root) + phase) % _message.ALIGN:
                root = _aligned_copy(root, phase, writable)
        views = []
        for off, n in msg.buffers:
            views.append(root[off : off + n])
        return self._deserialize(msg, root, views, copy, writable, msg.total)

    def decode_small(self, data: bytes) -> Any:
        """`decode(data)` for a whole message in private bytes: one with no out-of-band buffer
        and no checksum skips the general path (the receiver's small-message path)."""
        size = len(data)
        head = self._small_heads.get(size)
        if (
            head is not None
            and data.startswith(head)
            and size - len(head) < self.threshold
            and not self.checksum
        ):
            # The very head the full check below accepted for this size (the checks depend
            # only on the head's bytes and the size): the rest is the bytes object.
            self._used = True
            return data[len(head) :]
        if size >= _HEADER_SIZE and not self.checksum:
            word, zero, inband_len, total = _unpack_plain(data)
            if word == _PLAIN_WORD and not zero and total == size == _TABLE_START + inband_len:
                kind = self._bytes_kind
                if kind is None:
                    self._probe_bytes()
                    kind = self._bytes_kind
                # the type id alone rules out most messages before the bytes shortcut's checks
                if size > _KIND_AT and data[_KIND_AT] == kind:
                    value = self._small_bytes(data, size)
                    if value is not None:
                        return value
                current = _get_state()
                if current.left is not None:  # inside another decode: decode() nests a state
                    return self.decode(data)
                # _oob.begin_decode / end_decode for this (idle) case, inline: this codec's own
                # state is made current, idle, and stays current after (like begin_decode's);
                # its budget is opened and closed within try/finally
                state = self._state
                if current is not state:
                    _set_state(state)
                inband = _Buffer(data, _TABLE_START, inband_len)
                self._used = True
                try:
                    state.size = state.left = size + self.decode_allowance
                    obj = self._fory.deserialize(inband, buffers=_NO_BUFFERS)
                except ZcserError:
                    raise
                except Exception as exc:
                    raise _decode_error(exc) from exc
                finally:
                    state.size = state.left = None
                if inband.get_reader_index() != inband_len:
                    raise CorruptMessage("trailing bytes after the serialized object")
                return obj
        return self.decode(data)

    def _small_bytes(self, data: bytes, size: int) -> bytes | None:
        """The top-level bytes object in plain message `data` when it is exactly as `pack`
        writes it (pyfory's prefix, canonical length, under the threshold, nothing after it:
        the same bytes pyfory returns), else None. Its head is then remembered by size."""
        prefix = self._bytes_prefix
        if not prefix or not data.startswith(prefix, _TABLE_START):
            return None
        at = _TABLE_START + len(prefix)
        first = data[at] if at < size else 0x80
        if first < 0x80:
            n, at = first, at + 1
        elif at + 1 < size and 0 < data[at + 1] < 0x80:
            n, at = (first & 0x7F) | data[at + 1] << 7, at + 2
        else:
            return None
        if at + n != size or n >= self.threshold:
            return None
        self._used = True
        heads = self._small_heads
        if len(heads) < _BYTES_HEADS:
            heads[size] = data[:at]
        return data[at:]

    def decode_parts(
        self,
        head: Any,
        buffers: list[Any],
        *,
        copy: bool = False,
        owner: Any = None,
        align: int = _message.ALIGN,
    ) -> Any:
        """The object of a message received in parts (network frames), without reassembling it.

        `head` holds exactly header, table, digests and in-band bytes; `buffers` one bytes-like
        per table entry. Validated like `decode`. A buffer whose address is not a multiple of
        `align` is copied once to aligned memory, the others become read-only views. With
        `owner` (which must keep the buffers' memory alive), views hold `owner` instead.
        """
        mv = _byte_view(head).toreadonly()
        msg = _message.parse_head(mv)
        parts = [_byte_view(b).toreadonly() for b in buffers]
        _message.check_parts(msg, [p.nbytes for p in parts])
        self._check_checksum_flag(msg)
        size = mv.nbytes + sum(p.nbytes for p in parts)
        views = []
        for part in parts:
            if _address(part) % align:
                views.append(_aligned_copy(part, 0))
            else:
                views.append(_owned_view(part, owner) if owner is not None else part)
        return self._deserialize(msg, mv, views, copy, False, size)

    def _check_checksum_flag(self, msg: _message.MessageLayout) -> None:
        if self.checksum and not msg.checksum:
            raise CorruptMessage(
                "this codec requires checksums but the message has none: "
                "encode with Codec(checksum=True)"
            )

    def _deserialize(
        self,
        msg: _message.MessageLayout,
        head: memoryview,
        buffers: list[memoryview],
        copy: bool,
        writable: bool,
        size: int,
    ) -> Any:
        """Verify digests, run pyfory over the in-band bytes of `head` with `buffers` under a
        budget of `size` (the message's bytes) plus the allowance, check that both were
        consumed exactly."""
        if msg.digests is not None:
            _verify(head, msg, buffers)
        self._used = True
        state = self._state
        hashable = False
        while True:
            views = iter(buffers)
            inband = pyfory.Buffer(head[msg.inband_start : msg.inband_end])
            token = _begin_decode(state, size + self.decode_allowance, copy, writable)
            if hashable:
                _oob.get_state().hashable = True
            try:
                obj = self._fory.deserialize(inband, buffers=views)
                break
            except Exception as exc:
                # A zero-copy view cannot be hashed (its memory is not immutable bytes): a
                # message with a large bytes object in a set or as a dict key decodes again,
                # its out-of-band bytes as private copies (arrays stay zero-copy).
                if not hashable and buffers and _unhashable(exc):
                    hashable = True
                    continue
                if isinstance(exc, ZcserError):
                    raise
                raise _decode_error(exc) from exc
            finally:
                _end_decode(state, token)
        unused = length_hint(views)
        if unused:
            raise CorruptMessage(
                f"the table lists {len(msg.buffers)} buffers but {len(msg.buffers) - unused} "
                "were used"
            )
        if inband.get_reader_index() != msg.inband_end - msg.inband_start:
            raise CorruptMessage("trailing bytes after the serialized object")
        return obj

    def schema(self) -> dict[str, Any]:
        """JSON-able description of what this codec writes, for a stream's metadata."""
        return {
            "format": FORMAT_NAME,
            "format_version": _message.VERSION,
            "codec": CODEC_NAME,
            "codec_version": CODEC_VERSION,
            "pyfory_version": pyfory.__version__,
            "xlang": False,
            "ref": self.ref,
            "strict": not self.trusted,
            "checksum": self.checksum,
            "threshold": self.threshold,
            "alignment": _message.ALIGN,
            "adapters": list(self._adapters),
            "types": sorted(self._types),
        }

    def check_schema(self, other: dict[str, Any]) -> None:
        """Raise IncompatibleStream unless this codec can decode what `other`'s codec wrote
        (also when `other`, which comes from a peer or a file, is malformed)."""
        problem = schema_problem(other)
        if problem is not None:
            raise IncompatibleStream(
                f"the writer's codec schema is malformed ({problem}): it was not written by a "
                "zcser codec, or it was damaged"
            )
        mine = self.schema()
        problems = [
            f"{key}: writer {other.get(key)!r} vs reader {mine[key]!r}"
            for key in ("format", "format_version", "pyfory_version", "xlang", "ref", "alignment")
            if other.get(key) != mine[key]
        ]
        missing = set(other.get("adapters", [])) - set(mine["adapters"])
        if missing:
            problems.append(f"reader lacks adapters {sorted(missing)}")
        unknown = set(other.get("types", [])) - set(mine["types"])
        if unknown:
            problems.append(f"reader has not registered {sorted(unknown)} (codec.register)")
        if mine["checksum"] and not other.get("checksum"):
            problems.append("reader requires checksums, writer does not write them")
        if problems:
            raise IncompatibleStream(
                f"stream written by {other.get('codec')} {other.get('codec_version')} "
                f"(pyfory {other.get('pyfory_version')}), read by {CODEC_NAME} "
                f"{CODEC_VERSION} (pyfory {pyfory.__version__}): " + "; ".join(problems)
            )


_SCHEMA_FIELDS: dict[str, type] = {
    "format": str,
    "format_version": int,
    "codec": str,
    "codec_version": str,
    "pyfory_version": str,
    "xlang": bool,
    "ref": bool,
    "strict": bool,
    "checksum": bool,
    "threshold": int,
    "alignment": int,
    "adapters": list,
    "types": list,
}


_BYTES_HEADS = 64
"""Message heads (header to length) of top-level bytes objects kept per codec, by length."""

_PLAIN_HEADS: dict[int, bytes] = {}
"""In-band length -> the header of a message with no flags and no out-of-band buffer (a pure
function of the length, so shared by all codecs; filled by `_plain_head`)."""
_PLAIN_HEADS_MAX = 4096


def _plain_head(n: int) -> bytes:
    """The header of a plain message with `n` in-band bytes, remembered while there is room
    (a lookup and one concatenation cost about half of packing the header and concatenating)."""
    head: bytes = _pack_header(_MAGIC, _VERSION, 0, 0, 0, n, _TABLE_START + n)
    if len(_PLAIN_HEADS) < _PLAIN_HEADS_MAX:
        _PLAIN_HEADS[n] = head
    return head


def _varuint(n: int) -> bytes:
    """`n` as pyfory writes a var_uint32: LEB128, 7 bits a byte, low bits first."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def schema_problem(other: Any) -> str | None:
    """What is malformed in a codec schema read from a peer or a file (JSON of any shape), or
    None: every field `Codec.schema()` writes must have its type; lists hold strings."""
    if not isinstance(other, dict):
        return f"a JSON {type(other).__name__} where an object belongs"
    for key, kind in _SCHEMA_FIELDS.items():
        if key not in other:
            continue
        value = other[key]
        if type(value) is not kind or (
            isinstance(value, list) and not all(type(item) is str for item in value)
        ):
            return f"field {key!r} holds a {type(value).__name__} that is not a valid {key}"
    return None


def _unhashable(exc: BaseException | None) -> bool:
    """True when `exc` (or what it was raised from) is Python refusing to hash a value."""
    while exc is not None:
        if isinstance(exc, (TypeError, ValueError)) and (
            "unhashable" in str(exc) or "cannot hash" in str(exc)
        ):
            return True
        exc = exc.__cause__
    return False


def _decode_error(exc: Exception) -> DecodeError:
    return DecodeError(
        f"pyfory could not decode the message ({type(exc).__name__}: {exc}); "
        "the bytes are corrupt or the writer's codec differs (compare codec.schema())"
    )


def _named_class(text: str) -> type | None:
    """The class pyfory names as `<class 'module.Qual'>` in `text`, if its module is already
    imported (nothing is imported here)."""
    match = re.search(r"<class '([\w.]+)'>", text)
    if match is None:
        return None
    path = match.group(1)
    for cut in range(path.count("."), 0, -1):
        module_name, *qualname = path.rsplit(".", cut)
        found: Any = sys.modules.get(module_name)
        if found is None:
            continue
        for part in qualname:
            found = getattr(found, part, None)
        return found if isinstance(found, type) else None
    return None


def _unregistered_advice(exc: Exception) -> str:
    """The UnregisteredType message: register the class, except for a torch.nn.Module, whose
    state_dict() is what travels (a module is code plus tensors; zcser moves the tensors)."""
    torch = sys.modules.get("torch")
    cls = _named_class(str(exc))
    if torch is not None and cls is not None and issubclass(cls, torch.nn.Module):
        return (
            f"{cls.__qualname__} is a torch.nn.Module, which zcser does not send: send "
            "model.state_dict() (an OrderedDict of tensors, zero-copy) and load it into a "
            "model built on the reader with model.load_state_dict(...)"
        )
    text = str(exc)
    if any(f"<class '{kind}'>" in text for kind in _CODE_KINDS):
        return (
            f"{text}: a function is code, which zcser does not send (a strict reader builds "
            "data only): send the data it works on, or a name the reader maps to its own function"
        )
    return (
        f"{text}: call codec.register(cls) on the writer and the reader (a zcser.Codec given to "
        "both ends as codec=), or Codec(trusted=True) for trusted peers only"
    )


_CODE_KINDS = ("function", "builtin_function_or_method", "method", "functools.partial")


def _slot_names(cls: type) -> list[str]:
    """Every `__slots__` name of `cls` and its bases."""
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return names


def _check_name(name: str) -> None:
    """UsageError for a registered name that pyfory 1.7.7 writes but cannot read back: each
    part (before / after the last dot) must encode to fewer than 63 bytes."""
    namespace, _, typename = name.rpartition(".")
    parts = (
        (namespace, _NAMESPACE_ENCODER, _NAMESPACE_ENCODINGS, "module part"),
        (typename, _TYPENAME_ENCODER, _TYPE_NAME_ENCODINGS, "class part"),
    )
    for part, encoder, encodings, what in parts:
        size = len(encoder.encode(part, encodings).encoded_data)
        if size >= _NAME_LIMIT:
            raise UsageError(
                f"the registered name {name!r} is too long: its {what} encodes to {size} bytes, "
                f"pyfory reads back at most {_NAME_LIMIT - 1}; pass a shorter "
                "codec.register(cls, name=...) on the writer and the reader"
            )


class _DeclaredFieldsOnly(DeserializationPolicy):  # type: ignore[misc,unused-ignore]
    """pyfory's hook between reading a registered plain class's attributes and setting them:
    zcser sets them itself, straight into the instance `__dict__` or its slots (never through
    `setattr`, so no property setter, descriptor or `__setattr__` runs), and only declared
    fields: slot names, or for `__dict__` classes identifiers that are neither dunder names
    nor data descriptors (properties...) of the class. Other names raise CorruptMessage."""

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[type, tuple[dict[str, Any] | None, dict[str, bool]]] = {}

    def add(self, cls: type) -> None:
        """Take over the attributes of registered plain class `cls` (not enums, dataclasses or
        classes with their own __setstate__, which pyfory reads another way)."""
        if issubclass(cls, enum.Enum) or dataclasses.is_dataclass(cls):
            return
        slots: dict[str, Any] | None = None
        names = getattr(cls, "__slots__", None)
        if names is not None:
            slots = {}
            for slot in [names] if isinstance(names, str) else names:
                descriptor = inspect.getattr_static(cls, slot, None)
                if isinstance(descriptor, types.MemberDescriptorType):
                    slots[slot] = descriptor
        self._fields[cls] = (slots, {})

    def intercept_setstate(self, obj: Any, state: Any, **kwargs: Any) -> None:
        fields = self._fields.get(type(obj))
        if fields is None or not isinstance(state, dict):
            return
        slots, seen = fields
        target = None if slots is not None else obj.__dict__
        for name, value in state.items():
            if slots is not None and name in slots:
                slots[name].__set__(obj, value)
            elif target is not None and _settable(type(obj), name, seen):
                target[name] = value
            else:
                raise CorruptMessage(
                    f"the message sets attribute {str(name)[:64]!r} of "
                    f"{type(obj).__qualname__}, which is not a field zcser decodes (dunder "
                    "names, properties and other data descriptors, and names outside "
                    "__slots__ are refused)"
                )
        state.clear()  # set above: pyfory's setattr loop that follows finds nothing


def _settable(cls: type, name: Any, seen: dict[str, bool]) -> bool:
    """True for an attribute name a `__dict__` instance of `cls` may get from a peer (cached:
    at most 1024 names per class)."""
    known = seen.get(name) if type(name) is str else False
    if known is not None:
        return known
    ok = name.isidentifier() and not (name.startswith("__") and name.endswith("__"))
    if ok:
        kind = type(inspect.getattr_static(cls, name, None))
        ok = not (hasattr(kind, "__set__") or hasattr(kind, "__delete__"))
    if len(seen) < 1024:
        seen[name] = ok
    return ok


def _register_class(fory: Any, cls: type, name: str) -> None:
    """Register by name: enums by member name, dataclasses field by field, other classes
    through their __dict__."""
    if issubclass(cls, enum.Enum) or dataclasses.is_dataclass(cls):
        fory.register(cls, name=name)
    else:
        fory.register(cls, name=name, serializer=ObjectSerializer(fory.type_resolver, cls))


def _owned_view(root: memoryview, owner: Any) -> memoryview:
    """The same bytes as `root`, through an Arrow foreign buffer whose base keeps `owner` alive."""
    foreign = pa.foreign_buffer(_address(root), root.nbytes, base=owner)
    return memoryview(foreign)


def _verify(head: memoryview, msg: _message.MessageLayout, buffers: list[memoryview]) -> None:
    """Raise ChecksumMismatch unless every stored digest matches (`head` starts the message)."""
    assert msg.digests is not None
    digest_start = msg.meta_end
    got = _meta_digest(head, digest_start, msg.inband_start, msg.inband_end)
    if got != msg.digests[0]:
        raise ChecksumMismatch("header/in-band checksum mismatch: the message was altered")
    for i, buf in enumerate(buffers, start=1):
        if xxhash.xxh3_64_intdigest(buf) != msg.digests[i]:
            raise ChecksumMismatch(f"checksum mismatch in buffer {i - 1}: the data was altered")


_default: Codec | None = None


def default_codec() -> Codec:
    """The process-wide Codec with default settings, made on first use (`dumps`, `loads`,
    `save` and `load` use it when given none)."""
    global _default
    if _default is None:
        _default = Codec()
    return _default


def dumps(obj: Any) -> bytes:
    """One message as bytes (default Codec). Buffers are aligned relative to the message start."""
    plan = default_codec().plan(obj)
    out = bytearray(plan.nbytes_at(0))
    used = plan.write_into(out, base_address=0)
    return bytes(memoryview(out)[:used])


def loads(data: Any, copy: bool = False) -> Any:
    """The object in a message (default Codec); see Codec.decode."""
    return default_codec().decode(data, copy=copy)
