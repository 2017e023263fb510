"""RouterService: cost-, latency- and capability-based model routing with health and failover."""
