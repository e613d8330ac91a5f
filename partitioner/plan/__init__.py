"""The plan: the plan file, one call from a cost graph to a plan, and pictures of plans."""
