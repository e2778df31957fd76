"""BentoML serving of the registered families (thin over ``medmlops.inference``); start with ``medmlops serve``."""
