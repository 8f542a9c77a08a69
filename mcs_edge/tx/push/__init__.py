"""Push providers (APNs, FCM) for the wake-up of suspended mobile apps (RFC 8599)."""
