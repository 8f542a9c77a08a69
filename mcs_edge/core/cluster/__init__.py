"""Replication of call and flow state between edge nodes (docs/ha.md); sans-IO."""
