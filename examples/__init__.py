"""Small runnable applications adopting the cache (run each with ``python -m examples.<name>``);
the test suite runs them (tests/test_examples.py)."""
