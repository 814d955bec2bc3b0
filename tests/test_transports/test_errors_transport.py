"""transports.errors: the hierarchy is the contract callers catch by; every error pickles."""

from __future__ import annotations

import inspect
import pickle

import pytest

from transports import errors as E

ALL = [
    obj
    for _, obj in inspect.getmembers(E, inspect.isclass)
    if issubclass(obj, E.TransportError) and obj.__module__ == E.__name__
]


def test_every_public_error_is_exported() -> None:
    assert sorted(c.__name__ for c in ALL) == sorted(E.__all__)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_pickle_round_trip_keeps_type_message_and_fields(cls: type[E.TransportError]) -> None:
    err = cls("what went wrong; what to do", needed=10, available=5)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "what went wrong; what to do"
    assert back.args == err.args
    assert (back.needed, back.available) == (10, 5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_default_message_says_what_to_do(cls: type[E.TransportError]) -> None:
    assert len(str(cls())) > 20


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_is_in_exactly_one_of_the_three_families(cls: type[E.TransportError]) -> None:
    if cls in (
        E.TransportError,
        E.TransportUsageError,
        E.PeerProtocolError,
        E.TransportEnvironmentError,
    ):
        return
    families = [
        issubclass(cls, E.TransportUsageError),
        issubclass(cls, E.PeerProtocolError),
        issubclass(cls, E.TransportEnvironmentError),
    ]
    assert families.count(True) == 1


def test_families() -> None:
    usage = [E.FrameTooLarge, E.MetadataAlreadyWritten, E.MetadataTooLarge, E.ReservationError]
    usage += [E.InvalidFrameSize, E.TransportClosed, E.InvalidName, E.InvalidConfig]
    assert all(issubclass(c, E.TransportUsageError) for c in usage)
    assert all(issubclass(c, E.PeerProtocolError) for c in (E.CorruptBuffer, E.SequenceError))
    assert issubclass(E.IncompatibleBuffer, E.CorruptBuffer)
    env = [E.WriterDead, E.ReaderDead, E.BufferFull, E.Timeout, E.BufferNotFound]
    env += [E.BufferExists, E.WriterAlreadyConnected, E.ShmFullError, E.AtomicsUnavailable]
    assert all(issubclass(c, E.TransportEnvironmentError) for c in env)
    assert issubclass(E.WriterDead, E.PeerDead) and issubclass(E.ReaderDead, E.PeerDead)


def test_builtin_bases_for_natural_except_clauses() -> None:
    assert issubclass(E.BufferFull, E.Timeout)
    assert issubclass(E.Timeout, TimeoutError)
    for cls in (E.FrameTooLarge, E.InvalidFrameSize, E.MetadataTooLarge, E.InvalidName):
        assert issubclass(cls, ValueError)
    with pytest.raises(TimeoutError):
        raise E.BufferFull("full")


def test_oserror_based_timeout_keeps_a_plain_message() -> None:
    err = pickle.loads(pickle.dumps(E.Timeout("no frame within 1 s", timeout=1.0)))
    assert str(err) == "no frame within 1 s"
    assert err.timeout == 1.0  # type: ignore[attr-defined]
    assert err.message == "no frame within 1 s"
