"""`python -m stages.cli ...` is `evergreen ...` (the retrain command calls it this way, so the
commands it runs use its own interpreter)."""

from stages.cli import main

raise SystemExit(main())
