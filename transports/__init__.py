"""Byte transports (no serialization): the ZeroBuffer shared-memory ring, snapshot files."""

__all__: list[str] = []
