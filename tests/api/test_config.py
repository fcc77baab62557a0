"""GET /api/v1.0/config/ exposes the feature flags to anyone."""

import pytest


@pytest.mark.parametrize("enabled", [True, False])
def test_config_reflects_feature_flags(api_client, settings, enabled):
    settings.FEATURE_MAILDOMAIN_CREATE = enabled
    settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = not enabled

    response = api_client.get("/api/v1.0/config/")

    assert response.status_code == 200
    assert response.json() == {
        "FEATURE_MAILDOMAIN_CREATE": enabled,
        "FEATURE_MAILDOMAIN_MANAGE_ACCESSES": not enabled,
    }
