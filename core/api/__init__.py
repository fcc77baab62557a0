"""The REST API under /api/v1.0/: routes in `urls`, error bodies in `exceptions`."""
