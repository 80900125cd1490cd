from kvstore.demo.main import main

raise SystemExit(main())
