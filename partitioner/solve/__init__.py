"""Solvers: the optimal placement (ILP/MIP), DADS' min-cut, and the baselines beside every plan."""
