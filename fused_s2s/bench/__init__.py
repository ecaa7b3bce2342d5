"""Benchmarks that ship with fused_s2s: the grid of cases, interleaved timing, memory, the report (table,
JSON, plot), the one-file comparison and the A/B gate between two builds. `fused-s2s-bench --help`.

Nothing here is imported by `import fused_s2s`, and this package's own __init__ imports no fused_s2s: the
A/B gate's worker copies this folder and loads the build under test as fused_s2s (worker.py).
"""
