"""Serving: the agents that run stages, the client that sends requests, traces and deadlines."""
