"""kvstore.demo: ``make demo`` and what it stands on; not needed by the library.

``python -m kvstore.demo`` runs the demo (``main.py``). Beside it: the local
random-weight model (``local_model``), the demo's daemon and corpus
(``local_setup``), and process harnesses that tests and benchmarks share
(``daemon_process``: a ``kvstore serve`` child; ``etcd_process``: an etcd
child). Nothing below ``kvstore.demo`` imports it.
"""
