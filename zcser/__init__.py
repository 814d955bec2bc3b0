"""zcser: zero-copy serialization of objects holding big arrays."""

__all__: list[str] = []
