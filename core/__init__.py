"""The domain: mail domains, their admin accesses and the entitlements sync."""
