"""Django admin for operators: users and their rights, mail domains, the sync's records, and
the manual triggers (resync a user, a domain, everyone; release or discard held revocations)."""

from django.contrib import admin

# Importing the modules registers their ModelAdmins.
from core.admin import held_revocations, maildomains, sync, users  # noqa: F401

# The service has no site of its own beside the admin (`/` leads to it): no "View site" link
# that would only come back here.
admin.site.site_url = None
admin.site.site_header = "La Suite Messages: entitlements"
admin.site.site_title = "Messages entitlements"
admin.site.index_title = "Service at a glance"
# Lists get the whole width of a 1,400-pixel window (the index and breadcrumbs lead to others).
admin.site.enable_nav_sidebar = False
# The index opens on what an operator checks first (core/admin/overview.py).
admin.site.index_template = "admin/core/index.html"
