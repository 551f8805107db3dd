from granary.cli import main

raise SystemExit(main())
