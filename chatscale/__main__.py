from chatscale.cli import main

raise SystemExit(main())
