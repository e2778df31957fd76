"""BentoML serving of the registered families (thin over ``medmlops.inference.predict``); start with ``medmlops serve``."""
