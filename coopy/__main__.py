"""``python -m coopy``."""

from coopy.cli import main

raise SystemExit(main())
