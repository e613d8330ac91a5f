"""`edgecloud models` and `edgecloud export`: the bundled example models (filled in by the foundation work)."""
