"""``python -m pipelines compile|run ...`` (what ``medmlops pipeline compile|run`` starts)."""

from pipelines.cli import main

raise SystemExit(main())
