"""The INFORMER monitoring service's core: durable record store, processing worker, metrics, dashboard."""
