"""Permissions of the API: feature flags and staff-only writes."""

from django.conf import settings
from rest_framework.permissions import SAFE_METHODS, BasePermission


class MailDomainCreateEnabled(BasePermission):
    """Refuses writes while FEATURE_MAILDOMAIN_CREATE is off."""

    message = "Creating mail domains is disabled on this instance."

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or settings.FEATURE_MAILDOMAIN_CREATE


class ManageAccessesEnabled(BasePermission):
    """Refuses writes while FEATURE_MAILDOMAIN_MANAGE_ACCESSES is off."""

    message = "Managing mail domain accesses is disabled on this instance."

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES


class IsStaffForWrites(BasePermission):
    """Lets anyone authenticated read; only staff members write."""

    message = "Only staff members may create mail domains."

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or request.user.is_staff


class IsMailDomainAdmin(BasePermission):
    """Lets through only admins of the domain in the URL; others get 404, not 403, so the API
    never tells which domains exist. Runs before the feature flags for the same reason."""

    def has_permission(self, request, view):
        view.get_maildomain()  # raises NotFound for anyone who does not administer it
        return True
