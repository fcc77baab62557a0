"""Thin API views: each calls a service or selector of the domain."""

from functools import cached_property

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotAuthenticated, NotFound
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import selectors, services
from core.api import serializers as api_serializers
from core.api.authentication import IsProvisioningClient, ProvisioningKeyAuthentication
from core.api.permissions import (
    IsMailDomainAdmin,
    IsStaffForWrites,
    MailDomainCreateEnabled,
    ManageAccessesEnabled,
)
from core.models import MailDomain, User


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


class UserMeView(generics.RetrieveAPIView):
    """The authenticated user, with the state of their entitlements sync."""

    serializer_class = api_serializers.UserMeSerializer

    def get_object(self):
        return self.request.user


class AdminMailDomainListCreateView(generics.ListCreateAPIView):
    """Mail domains the user administers; staff create new ones when the feature is on."""

    permission_classes = [IsAuthenticated, MailDomainCreateEnabled, IsStaffForWrites]
    serializer_class = api_serializers.MailDomainSerializer

    def get_queryset(self):
        return selectors.maildomains_administered_by(user=_authenticated_user(self.request))

    @extend_schema(
        request=api_serializers.MailDomainCreateSerializer,
        responses={201: api_serializers.MailDomainSerializer},
    )
    def post(self, request):
        payload = api_serializers.MailDomainCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        maildomain = services.create_maildomain(
            name=payload.validated_data["name"], creator=request.user
        )
        return Response(
            api_serializers.MailDomainSerializer(maildomain).data, status=status.HTTP_201_CREATED
        )


class MailDomainAccessMixin(generics.GenericAPIView):
    """The mail domain of the URL, resolved once, for its admins only."""

    permission_classes = [IsAuthenticated, IsMailDomainAdmin, ManageAccessesEnabled]
    serializer_class = api_serializers.MailDomainAccessSerializer

    def get_maildomain(self) -> MailDomain:
        return self._maildomain

    @cached_property
    def _maildomain(self) -> MailDomain:
        maildomain = selectors.get_administered_maildomain(
            user=_authenticated_user(self.request), maildomain_id=self.kwargs["maildomain_id"]
        )
        if maildomain is None:
            raise NotFound("No mail domain with this id among those you administer.")
        return maildomain

    def get_queryset(self):
        return selectors.maildomain_accesses(maildomain=self.get_maildomain())


class MailDomainAccessListCreateView(MailDomainAccessMixin, generics.ListCreateAPIView):
    """Accesses of a mail domain; admins of the domain add manual ones."""

    @extend_schema(
        request=api_serializers.MailDomainAccessCreateSerializer,
        responses={201: api_serializers.MailDomainAccessSerializer},
    )
    def post(self, request, maildomain_id):
        payload = api_serializers.MailDomainAccessCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        access = services.create_maildomain_access(
            maildomain=self.get_maildomain(), **payload.validated_data
        )
        return Response(
            api_serializers.MailDomainAccessSerializer(access).data,
            status=status.HTTP_201_CREATED,
        )


class MailDomainAccessDetailView(MailDomainAccessMixin, generics.RetrieveDestroyAPIView):
    """One access of a mail domain; admins of the domain remove it."""

    def perform_destroy(self, instance):
        services.delete_maildomain_access(access=instance)


class ProvisioningView(APIView):
    """DeployCenter creates mail domains and updates their custom attributes."""

    authentication_classes = [ProvisioningKeyAuthentication]
    permission_classes = [IsProvisioningClient]

    @extend_schema(
        request=api_serializers.ProvisioningRequestSerializer,
        responses={
            200: api_serializers.ProvisioningResultSerializer,
            400: OpenApiResponse(description="Malformed request; the body says which field."),
            403: OpenApiResponse(description="Missing, wrong or unconfigured API key."),
        },
    )
    def post(self, request):
        payload = api_serializers.ProvisioningRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = services.provision_maildomains(
            names=payload.validated_data["domains"],
            custom_attributes=payload.validated_data.get("custom_attributes"),
        )
        return Response(result.as_dict())


def _authenticated_user(request: Request) -> User:
    """The request's user, which the view's IsAuthenticated has already required."""
    if not isinstance(request.user, User):
        raise NotAuthenticated()
    return request.user
