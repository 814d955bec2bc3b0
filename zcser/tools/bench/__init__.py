"""Benchmarks: sections returning rows of zcser next to peers measured in the same run.

`runner.py` holds the codec sections and the table of all sections (`python -m zcser bench`);
`channel.py`, `net.py` and `snapshot.py` are one section each; `transport.py` compares the
ZeroBuffer transport alone with the reference `zerobuffer-ipc` (its own command line)."""
