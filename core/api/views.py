"""Thin API views: each calls a service or selector of the domain."""

import io
from functools import cached_property

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import (
    AuthenticationFailed,
    NotAuthenticated,
    NotFound,
    ParseError,
    PermissionDenied,
)
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import selectors, services
from core.api import serializers as api_serializers
from core.api.authentication import (
    ChangesTokenAuthentication,
    IsKeyClient,
    ProvisioningKeyAuthentication,
)
from core.api.parsers import JSONParser
from core.api.permissions import (
    IsMailDomainAdmin,
    IsStaffForWrites,
    MailDomainCreateEnabled,
    ManageAccessesEnabled,
)
from core.entitlements.change_signals import (
    MAX_BODY_BYTES,
    ChangeEvent,
    InvalidChangeSignal,
    SignalResult,
    parse_change_signal,
    receive_change_signal,
    record_invalid_signal,
    record_refused_signal,
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
    permission_classes = [IsKeyClient]

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


class EntitlementChangesView(APIView):
    """DeployCenter's webhooks: a change signal requests the syncs of the users it names.

    Off (404) until ENTITLEMENTS_CHANGES_TOKEN is set. The body is read here, not by a
    parser, so that its size is checked first and every refusal is a 400 that says why.
    """

    authentication_classes = [ChangesTokenAuthentication]
    permission_classes = [IsKeyClient]
    parser_classes: list = []

    def initial(self, request, *args, **kwargs):
        if not settings.ENTITLEMENTS_CHANGES_TOKEN:
            raise NotFound()
        super().initial(request, *args, **kwargs)

    @extend_schema(
        request=inline_serializer(
            "ChangeSignal",
            {
                "event_type": serializers.ChoiceField(choices=list(ChangeEvent)),
                "account_email": serializers.CharField(required=False, allow_null=True),
                "account_external_id": serializers.CharField(required=False, allow_null=True),
                "organization_siret": serializers.CharField(required=False, allow_null=True),
            },
        ),
        responses={
            202: inline_serializer(
                "ChangeSignalReceipt",
                {
                    "users": serializers.IntegerField(),
                    "organisation_run": serializers.CharField(allow_null=True),
                },
            ),
            400: OpenApiResponse(description="Not a change signal; the body says why."),
            403: OpenApiResponse(description="Missing or wrong token."),
            404: OpenApiResponse(description="Change signals are off (no token set)."),
            503: OpenApiResponse(description="An organisation's run could not be queued."),
        },
    )
    def post(self, request):
        try:
            signal = parse_change_signal(_read_json(request))
        except (ParseError, InvalidChangeSignal) as error:
            record_invalid_signal()
            detail = error.detail if isinstance(error, ParseError) else str(error)
            return Response({"detail": detail}, status=status.HTTP_400_BAD_REQUEST)
        receipt = receive_change_signal(signal=signal)
        if receipt.result == SignalResult.NOT_SENT:
            return Response(
                {"detail": "The task broker cannot be reached; try again later."},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(receipt.as_dict(), status=status.HTTP_202_ACCEPTED)

    def handle_exception(self, exc):
        if isinstance(exc, AuthenticationFailed | NotAuthenticated | PermissionDenied):
            record_refused_signal()
        return super().handle_exception(exc)


def _read_json(request):
    """The request's body decoded as strict JSON; ParseError for one too large or not JSON."""
    limit = MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if (declared.isdigit() and int(declared) > limit) or len(request.body) > limit:
        raise ParseError(f"Request body is larger than {limit // 1024} KB.")
    return JSONParser().parse(io.BytesIO(request.body))
