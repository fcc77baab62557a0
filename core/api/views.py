"""Thin API views: each calls a service or selector of the domain."""

from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView


class ConfigView(APIView):
    """Public configuration a front end needs: the feature flags."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        responses=inline_serializer(
            "Config",
            {
                "FEATURE_MAILDOMAIN_CREATE": serializers.BooleanField(),
                "FEATURE_MAILDOMAIN_MANAGE_ACCESSES": serializers.BooleanField(),
            },
        )
    )
    def get(self, request):
        return Response(
            {
                "FEATURE_MAILDOMAIN_CREATE": settings.FEATURE_MAILDOMAIN_CREATE,
                "FEATURE_MAILDOMAIN_MANAGE_ACCESSES": settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES,
            }
        )
