"""`python -m dftune` is the `dftune` command."""

from dftune.cli.main import main

raise SystemExit(main())
