"""{% service_overview %}: the admin index's "Service at a glance" panel."""

from django import template
from django.utils import timezone

from core.admin.overview import service_overview as overview

register = template.Library()


@register.inclusion_tag("admin/core/service_overview.html", takes_context=True)
def service_overview(context) -> dict:
    """The panel, for staff allowed to see the sync runs; nothing for the others."""
    if not context["request"].user.has_perm("core.view_syncrun"):
        return {"shown": False}
    return {"shown": True, **overview(now=timezone.now())}
