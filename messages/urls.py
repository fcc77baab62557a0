"""Top-level URLs: the admin (also at `/`), OIDC login, the REST API and its schema, metrics."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from mozilla_django_oidc.views import OIDCLogoutView

from core.metrics_endpoint import metrics_view

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index"), name="root"),
    # The admin's logout button ends the provider's session too (RP-initiated logout).
    path("admin/logout/", OIDCLogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    re_path(r"^metrics/?$", metrics_view, name="metrics"),
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("api/v1.0/", include("core.api.urls")),
    path("api/v1.0/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1.0/swagger/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger"),
]

handler404 = "core.api.handlers.page_not_found"
handler500 = "core.api.handlers.server_error"
