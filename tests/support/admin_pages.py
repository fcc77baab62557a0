"""Reading and acting on the Django admin's pages, as an operator's browser does."""


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
