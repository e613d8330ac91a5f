"""Device and link profiles, the on-host profiler and the latency predictor (leaf package: imports no other)."""
