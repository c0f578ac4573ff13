"""`attnlab-bench`: attnlab's transformer timed against its peers (bench.py), and the measuring,
FLOP and result helpers it uses (docs/performance.md)."""
