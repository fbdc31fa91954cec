from aqnet.cli import main

raise SystemExit(main())
