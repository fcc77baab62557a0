"""Routes of the REST API."""

from django.urls import path

from core.api import views

urlpatterns = [
    path("config/", views.ConfigView.as_view(), name="config"),
]
