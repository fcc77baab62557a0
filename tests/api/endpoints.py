"""The API's paths and the provisioning key the API tests present."""

MAILDOMAINS_URL = "/api/v1.0/admin/maildomains/"
ME_URL = "/api/v1.0/users/me/"
PROVISIONING_URL = "/api/v1.0/provisioning/maildomains/"
PROVISIONING_KEY = "s3cret-Provisioning-key"
PROVISIONING_REFUSED = {"detail": "Invalid or missing provisioning API key."}
NOT_ADMINISTERED = {"detail": "No mail domain with this id among those you administer."}


def accesses_url(maildomain_id) -> str:
    return f"/api/v1.0/maildomains/{maildomain_id}/accesses/"


def access_url(maildomain_id, access_id) -> str:
    return f"/api/v1.0/maildomains/{maildomain_id}/accesses/{access_id}/"


def post_raw(client, body: str, content_type: str = "application/json"):
    """POST a body as given, to the provisioning endpoint."""
    return client.generic("POST", PROVISIONING_URL, body, content_type=content_type)
