"""Fixtures shared by several test modules (importable as ``helpers`` through ``tests/conftest.py``)."""
