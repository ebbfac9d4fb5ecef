"""The benchmarks of ``make bench``: in process (bench.py) and on Redis (redis_bench.py)."""
