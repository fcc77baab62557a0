"""Request and response shapes of the API."""

import json
import math
import re
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User
from core.selectors import find_user, get_sync_summary


class SyncStateSerializer(serializers.Serializer):
    """Where the user's entitlements sync stands."""

    status = serializers.ChoiceField(choices=EntitlementSyncState.Status.choices)
    requested_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class UserMeSerializer(serializers.ModelSerializer):
    """The authenticated user and the state of their entitlements sync."""

    sync = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "email", "full_name", "is_staff", "sync"]
        read_only_fields = fields

    @extend_schema_field(SyncStateSerializer)
    def get_sync(self, user: User) -> dict:
        return SyncStateSerializer(get_sync_summary(user=user)).data


class MailDomainSerializer(serializers.ModelSerializer):
    """A mail domain."""

    class Meta:
        model = MailDomain
        fields = ["id", "name", "custom_attributes", "created_at", "updated_at"]
        read_only_fields = fields


class MailDomainCreateSerializer(serializers.Serializer):
    """A new mail domain: its name (normalised to lower case)."""

    name = serializers.CharField(max_length=253, trim_whitespace=True)


class UserSummarySerializer(serializers.ModelSerializer):
    """Who holds an access."""

    class Meta:
        model = User
        fields = ["id", "email", "full_name"]
        read_only_fields = fields


class MailDomainAccessSerializer(serializers.ModelSerializer):
    """A user's role on a mail domain, and what made it."""

    user = UserSummarySerializer(read_only=True)

    class Meta:
        model = MailDomainAccess
        fields = ["id", "user", "role", "source", "created_at", "updated_at"]
        read_only_fields = fields


class MailDomainAccessCreateSerializer(serializers.Serializer):
    """A new manual access: the user by id or by email (exactly one), and the role."""

    user = serializers.UUIDField(required=False, help_text="The user's id.")
    email = serializers.EmailField(required=False, help_text="The user's email, if no id.")
    role = serializers.ChoiceField(
        choices=MailDomainAccess.Role.choices, default=MailDomainAccess.Role.ADMIN
    )

    def validate(self, attrs):
        if ("user" in attrs) == ("email" in attrs):
            raise serializers.ValidationError(
                {"user": ["Give exactly one of `user` (an id) or `email`."]}
            )
        user = find_user(user_id=attrs.get("user"), email=attrs.get("email"))
        if user is None:
            field = "user" if "user" in attrs else "email"
            raise serializers.ValidationError({field: ["No user with this id or email."]})
        return {"user": user, "role": attrs["role"]}


class StrictStringField(serializers.CharField):
    """A string kept exactly as sent; numbers and other types are refused, not converted."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return data


# PostgreSQL's jsonb refuses these with a DataError, which would surface as a 500.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable_json_part(value: Any) -> str:
    """What in a parsed JSON value PostgreSQL cannot store, or "" when it can all be stored."""
    # Walked without recursion: the parser already allows nesting close to the stack limit.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and "\x00" in item:
            return "null characters"
        elif isinstance(item, str) and _SURROGATE.search(item):
            return "lone surrogate characters"
        elif isinstance(item, float) and not math.isfinite(item):
            # 1e400 parses to infinity, which JSON cannot carry back out.
            return "numbers too large for JSON"
    return ""


def json_depth(value: Any) -> int:
    """How many objects and arrays deep a parsed JSON value nests (a scalar: 0)."""
    # Walked without recursion, like unstorable_json_part.
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


class DomainListField(serializers.ListField):
    """A list of domain names, or one string of names separated by commas (the seed product's
    form); blank pieces of such a string are dropped."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = [piece.strip() for piece in data.split(",") if piece.strip()]
        return super().to_internal_value(data)


class ProvisioningRequestSerializer(serializers.Serializer):
    """DeployCenter's provisioning request."""

    domains = DomainListField(
        child=StrictStringField(allow_blank=True, trim_whitespace=False),
        allow_empty=False,
        help_text=(
            "Domain names to provision, as a list or one comma-separated string; at most "
            "PROVISIONING_MAX_DOMAINS (default 1000)."
        ),
    )
    custom_attributes = serializers.DictField(
        required=False,
        help_text="Replaces the custom attributes of every named domain; omitted: unchanged.",
    )

    def validate_domains(self, domains: list[str]) -> list[str]:
        maximum = settings.PROVISIONING_MAX_DOMAINS
        if len(domains) > maximum:
            raise serializers.ValidationError(
                f"At most {maximum} domains per request, got {len(domains)}."
            )
        return domains

    def validate_custom_attributes(self, custom_attributes: dict) -> dict:
        unstorable = unstorable_json_part(custom_attributes)
        if unstorable:
            raise serializers.ValidationError(f"Must not contain {unstorable}.")
        # Bounded so that every page and export showing a stored value can render it.
        max_depth = settings.PROVISIONING_CUSTOM_ATTRIBUTES_MAX_DEPTH
        if json_depth(custom_attributes) > max_depth:
            raise serializers.ValidationError(
                f"Must not nest objects and lists more than {max_depth} levels deep "
                "(PROVISIONING_CUSTOM_ATTRIBUTES_MAX_DEPTH)."
            )
        max_bytes = settings.PROVISIONING_CUSTOM_ATTRIBUTES_MAX_BYTES
        size = len(
            json.dumps(custom_attributes, ensure_ascii=False, separators=(",", ":")).encode()
        )
        if size > max_bytes:
            raise serializers.ValidationError(
                f"Must not exceed {max_bytes} bytes as compact JSON, got {size} "
                "(PROVISIONING_CUSTOM_ATTRIBUTES_MAX_BYTES)."
            )
        return custom_attributes


class ProvisioningErrorSerializer(serializers.Serializer):
    """One name that was not provisioned."""

    domain = serializers.CharField()
    error = serializers.CharField()


class ProvisioningResultSerializer(serializers.Serializer):
    """What a provisioning request did."""

    created = serializers.ListField(child=serializers.CharField())
    existing = serializers.ListField(child=serializers.CharField())
    # DRF's metaclass takes declared fields off the class: this does not hide Serializer.errors.
    errors = ProvisioningErrorSerializer(many=True)  # type: ignore[assignment]
