"""Byzantine-robust distributed training: DGD with sync period tau, Draco codes, robust aggregators."""
