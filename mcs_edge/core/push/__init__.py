"""Push wake-up of suspended mobile clients (RFC 8599): bindings and held calls, sans-IO."""
