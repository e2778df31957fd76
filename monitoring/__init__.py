"""The INFORMER monitoring service's HTTP app (thin over ``medmlops.monitoring``); start with ``medmlops monitor serve``."""
