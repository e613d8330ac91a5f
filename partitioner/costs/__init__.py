"""The cost graph: what a placement costs, the scenario it is priced for, and the objectives."""
