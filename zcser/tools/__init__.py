"""Tools around the library: the command line, the demo, the benchmarks and their plots.

The library never imports this package (a test and the import contract in `make lint` keep it
so); everything here uses only zcser's public API and the transports'.

```
cli.py        `zcser` / `python -m zcser`: demo, bench, ls, inspect, gc, snapshot
demo.py       the two-process demo with its table
harness.py    two-process measurement plumbing shared by the demo and the benchmarks
plot.py       benchmark rows as one PNG
bench/        one module per benchmark section, `runner.py` runs them
```
"""
