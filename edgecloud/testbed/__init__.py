"""Emulated edge and cloud hosts on one machine: a shaped link and a slowed device (docs/architecture.md §4)."""
