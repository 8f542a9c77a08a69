"""Replication adapters (docs/ha.md)."""
