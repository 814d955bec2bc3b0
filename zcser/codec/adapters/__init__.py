"""Type adapters: how numpy, Arrow, torch, pandas, bytes-likes and a few builtins travel."""
