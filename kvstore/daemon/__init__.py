"""kvstore.daemon: the ``kvstore serve`` process: settings, lifecycle, command line.

Public surface: ``load_config`` / ``DaemonConfig`` (TOML, ``KVSTORE_*`` env,
flags), ``Daemon`` (store + listeners + services, graceful drain) and
``serve(config)``. The CLI entry point is ``kvstore.daemon.cli:main``.
"""

from kvstore.daemon.config import DaemonConfig, load_config
from kvstore.daemon.daemon import Daemon, serve

__all__ = ["Daemon", "DaemonConfig", "load_config", "serve"]
