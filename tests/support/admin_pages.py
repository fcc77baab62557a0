"""Reading and acting on the Django admin's pages, as an operator's browser does."""

from django.urls import reverse

USERS = reverse("admin:core_user_changelist")
DOMAINS = reverse("admin:core_maildomain_changelist")
RUNS = reverse("admin:core_syncrun_changelist")
HELD = reverse("admin:core_heldrevocation_changelist")
RESYNC_ALL = reverse("admin:core_syncrun_resync_all")


def shown(response) -> list[str]:
    """The messages the page shows."""
    return [str(message) for message in response.context["messages"]]


def act(client, url: str, action: str, objects, **extra):
    return client.post(
        url,
        {"action": action, "_selected_action": [str(obj.pk) for obj in objects], **extra},
        follow=True,
    )


def action_names(client, url: str) -> set[str]:
    form = client.get(url).context["action_form"]
    return {name for name, _ in form.fields["action"].choices if name} if form else set()
