"""Fixtures of the engine tests of kvstore.client (``local_model_dir``: tests/conftest.py)."""
