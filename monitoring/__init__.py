"""The INFORMER monitoring service's HTTP app (thin over ``medmlops.monitor``); start with ``medmlops monitor serve``."""
