"""Every error of both packages survives pickling, in-process and across a real process boundary.

test_errors_transport.py covers the transport hierarchy in-process; this adds zcser.errors, the
round trip through a worker process (how multiprocessing and concurrent.futures report errors),
and real errors raised by the code (with their extra fields), not only constructed ones.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from conftest import unique_name

from transports import errors as TE
from transports.zerobuffer import BufferConfig, Reader, Writer
from zcser import errors as ZE

MESSAGE = "what went wrong; what to do about it"


def _classes(module: Any, base: type[BaseException]) -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, base) and obj.__module__ == module.__name__
    ]


TRANSPORT = _classes(TE, TE.TransportError)
ZCSER = _classes(ZE, ZE.ZcserError)
ALL = TRANSPORT + ZCSER


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def _class_by_name(qualname: str) -> type[BaseException]:
    module, name = qualname.rsplit(".", 1)
    cls = getattr(TE if module == TE.__name__ else ZE, name)
    assert isinstance(cls, type) and issubclass(cls, BaseException)
    return cls


def _raise(qualname: str) -> None:
    """Worker side: raise one error class with a message (and fields for transport errors)."""
    cls = _class_by_name(qualname)
    if issubclass(cls, TE.TransportError):
        raise cls(MESSAGE, needed=10, available=5)
    raise cls(MESSAGE)


def _raise_real(name: str) -> None:
    """Worker side: provoke real errors from the transport, with the fields the code sets."""
    with Reader(name, BufferConfig(0, 256), timeout=0) as reader, Writer(name) as writer:
        with contextlib.suppress(TE.FrameTooLarge):
            writer.write(b"x" * 1000)
        reader.read()  # nothing written: Timeout(timeout=0.0)


def test_zcser_errors_are_all_exported() -> None:
    assert sorted(c.__name__ for c in ZCSER) == sorted(n for n in ZE.__all__ if n != "translate")


@pytest.mark.parametrize("cls", ZCSER, ids=lambda c: c.__name__)
def test_zcser_error_pickles_with_type_and_message(cls: type[ZE.ZcserError]) -> None:
    back = pickle.loads(pickle.dumps(cls(MESSAGE), protocol=pickle.HIGHEST_PROTOCOL))
    assert type(back) is cls
    assert str(back) == MESSAGE
    assert isinstance(back, ZE.ZcserError)


def test_every_error_of_both_packages_crosses_a_process_boundary() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        futures = {cls: pool.submit(_raise, _qualname(cls)) for cls in ALL}
        for cls, future in futures.items():
            exc = future.exception(timeout=60)
            assert type(exc) is cls, (cls, exc)
            assert str(exc) == MESSAGE
            if issubclass(cls, TE.TransportError):
                assert (exc.needed, exc.available) == (10, 5)  # type: ignore[union-attr]


def test_real_transport_error_from_another_process_keeps_its_fields() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        exc = pool.submit(_raise_real, unique_name("pk")).exception(timeout=60)
    assert type(exc) is TE.Timeout
    assert isinstance(exc, TimeoutError)
    assert exc.timeout == 0.0  # type: ignore[attr-defined]
    assert "within 0.0 s" in str(exc)


def test_real_zcser_errors_pickle_with_their_message() -> None:
    import zcser

    msg = bytearray(zcser.dumps({"a": 1}))
    msg[0] ^= 0xFF
    with pytest.raises(ZE.CorruptMessage) as info:
        zcser.loads(bytes(msg))
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is ZE.CorruptMessage
    assert str(back) == str(info.value) and "magic" in str(back)
