"""Benchmarks of sqla-redis-cache, kept in the source checkout (not installed with the package).

``sqla-redis-cache bench`` runs ``bench`` (sync) and ``bench_async`` (``--async``) from here;
``compression.py`` and ``entity_commit.py`` are scripts (``python benchmarks/<name>.py``).
"""
