"""
Benchmarks for gateway: an echo backend, a load generator, reference proxies
to compare against, and the comparison script (``python -m benchmarks.compare``).

Everything here talks to 127.0.0.1 only.
"""
