"""Benchmarks: `python3 -m bench.report` runs them all and rewrites BENCHMARKS.md.

Each benchmark module has `run() -> Section`; the figures it returns carry their method
and, where the project has one, the target they are held to. `python3 -m bench.paired OLD
NEW SECTION ...` runs sections for two commits, alternating, and compares their figures.
"""
