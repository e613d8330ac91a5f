"""Runners that play the simulator's rounds with real processes (robust_training.simulator stays the core)."""
