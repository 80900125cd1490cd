"""``python -m benchmarks.peers``: kvstore beside its peers, round-robin, in one process tree.

Systems: numpy memcpy (the baseline), kvstore over shm, tcp and ucx (the
public ``kvstore.client`` API against a ``kvstore serve`` child), LMCache's
``lmcache server`` (CPU L1), Mooncake Store (in a private network namespace)
and Redis. Each system runs in a worker child process (``worker.py``) that
the runner (``runner.py``) drives with one JSON line a round; a system whose
client lives in another virtual environment (``.venv-peers``, made by
``make bench-peers``) has its worker started by that environment's python.
The modules here import only the standard library and numpy at the top, so
the worker runs in either environment; ``sys_kvstore`` imports kvstore and
runs in the main one.
"""
