"""Entitlements backends: one module per upstream, all implementing `base.EntitlementsBackend`."""
