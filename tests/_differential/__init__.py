"""Randomized differential test of the query and entity caches (see tests/test_differential.py).

``schema``: the ``d_`` tables; ``common``: id pool, plain values, known-fault gates;
``reads``: read shapes; ``writes``: write paths; ``machine``: the Hypothesis state machine.
"""
