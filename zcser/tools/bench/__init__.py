"""Benchmarks: one module per section, each returning rows of zcser next to peers measured in
the same run; `runner.py` holds the section table and runs them (`python -m zcser bench`)."""
