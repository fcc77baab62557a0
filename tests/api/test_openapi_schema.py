"""The OpenAPI schema generates, validates and carries no warning."""

import yaml
from django.core.management import call_command


def test_schema_validates_without_any_warning(tmp_path):
    schema_file = tmp_path / "schema.yaml"

    # --fail-on-warn makes any drf-spectacular warning or error exit non-zero.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(schema_file))

    schema = yaml.safe_load(schema_file.read_text())
    assert set(schema["paths"]) == {
        "/api/v1.0/config/",
        "/api/v1.0/users/me/",
        "/api/v1.0/admin/maildomains/",
        "/api/v1.0/maildomains/{maildomain_id}/accesses/",
        "/api/v1.0/maildomains/{maildomain_id}/accesses/{id}/",
        "/api/v1.0/provisioning/maildomains/",
        "/api/v1.0/entitlements/changes/",
    }
    changes = schema["paths"]["/api/v1.0/entitlements/changes/"]["post"]
    assert changes["security"] == [{"changesToken": []}]
    provisioning = schema["paths"]["/api/v1.0/provisioning/maildomains/"]["post"]
    assert provisioning["security"] == [{"provisioningKey": []}]
    assert schema["components"]["securitySchemes"]["provisioningKey"] == {
        "type": "http",
        "scheme": "bearer",
    }


def test_schema_endpoint_serves_it(client, db):
    response = client.get("/api/v1.0/schema/")

    assert response.status_code == 200
    assert b"/api/v1.0/provisioning/maildomains/" in response.content
