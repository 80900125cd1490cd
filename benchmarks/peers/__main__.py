"""Entry point: ``python -m benchmarks.peers`` (see ``benchmarks.peers.runner``)."""

from benchmarks.peers.runner import main

raise SystemExit(main())
