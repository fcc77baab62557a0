"""Routes of the REST API."""

from django.urls import path

from core.api import views

urlpatterns = [
    path("config/", views.ConfigView.as_view(), name="config"),
    path("users/me/", views.UserMeView.as_view(), name="users-me"),
    path(
        "admin/maildomains/",
        views.AdminMailDomainListCreateView.as_view(),
        name="admin-maildomains",
    ),
    path(
        "maildomains/<uuid:maildomain_id>/accesses/",
        views.MailDomainAccessListCreateView.as_view(),
        name="maildomain-accesses",
    ),
    path(
        "maildomains/<uuid:maildomain_id>/accesses/<uuid:pk>/",
        views.MailDomainAccessDetailView.as_view(),
        name="maildomain-access-detail",
    ),
    path(
        "entitlements/changes/",
        views.EntitlementChangesView.as_view(),
        name="entitlements-changes",
    ),
    path(
        "provisioning/maildomains/",
        views.ProvisioningView.as_view(),
        name="provisioning-maildomains",
    ),
]
