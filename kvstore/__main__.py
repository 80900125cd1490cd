from kvstore.daemon.cli import main

raise SystemExit(main())
