from django.conf import settings
from django.contrib.auth.validators import UnicodeUsernameValidator
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from core.accounts import selectors
from core.accounts.models import ApiKeyScope
from core.accounts.services import api_key_create, api_key_revoke, user_login, user_logout, user_register
from core.middleware import client_address
from core.pagination import page_of
from core.validation import AddressField, LineField


class RegistrationOpen(BasePermission):
    """REGISTRATION_OPEN=false closes registration: a 403 saying so."""

    message = "Registration is closed."

    def has_permission(self, request, view):
        return settings.REGISTRATION_OPEN


class RegistrationThrottle(SimpleRateThrottle):
    """At most REGISTRATION_RATE_LIMIT registrations per client address (behind the gateway, the
    address it forwards: TRUSTED_PROXY_HOPS), counted in the shared database cache."""

    scope = "registration"

    def get_rate(self):
        rate = settings.REGISTRATION_RATE_LIMIT.strip().lower()
        return None if rate in ("", "off", "none", "0") else rate

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": client_address(request)}


class RegisterApi(APIView):
    authentication_classes = []
    permission_classes = [RegistrationOpen]
    throttle_classes = [RegistrationThrottle]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "RegisterInput"

        email = AddressField()
        username = LineField(max_length=150, validators=[UnicodeUsernameValidator()])
        password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "RegisterOutput"

        email = serializers.EmailField()
        username = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = user_register(**data.validated_data)
        return Response(self.OutputSerializer(user).data, status=status.HTTP_201_CREATED)


class LoginApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "LoginInput"

        username = LineField(max_length=254, help_text="The user's email address.")
        password = serializers.CharField(max_length=128, trim_whitespace=False)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "LoginOutput"

        email = serializers.EmailField(source="user.email")
        token = serializers.CharField()
        expiry = serializers.DateTimeField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = user_login(
            email=data.validated_data["username"],
            password=data.validated_data["password"],
            request=request._request,
        )
        return Response(self.OutputSerializer(issued).data)


class LogoutApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        user_logout(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


# API keys: managed with a user token only. The views below name no `api_key_scope`, so a key is
# refused on them (a key cannot make, list or revoke keys).


class ApiKeyOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "ApiKey"

    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.SerializerMethodField(help_text="How the key begins: `ek_<prefix>_`.")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKeyScope.choices))
    rate_limit_per_minute = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(
        allow_null=True, help_text="To within API_KEY_LAST_USED_PRECISION_SECONDS (a minute)."
    )
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_prefix(self, api_key) -> str:
        return f"ek_{api_key.prefix}"


class ApiKeyCreatedSerializer(ApiKeyOutputSerializer):
    class Meta:
        ref_name = "ApiKeyCreated"

    key = serializers.CharField(help_text="The key: shown this once, stored only as a digest.")


class ApiKeyInputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "ApiKeyInput"

    name = LineField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKeyScope.choices), allow_empty=False, max_length=len(ApiKeyScope)
    )
    rate_limit_per_minute = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Requests per minute; API_KEY_DEFAULT_RATE_PER_MINUTE (60) if left out, at most "
        "API_KEY_MAX_RATE_PER_MINUTE (6,000).",
    )

    def validate_rate_limit_per_minute(self, value: int) -> int:
        if value > settings.API_KEY_MAX_RATE_PER_MINUTE:
            raise serializers.ValidationError(f"Ensure this value is at most {settings.API_KEY_MAX_RATE_PER_MINUTE}.")
        return value


class ApiKeyListCreateApi(APIView):
    @extend_schema(responses=page_of(ApiKeyOutputSerializer, name="ApiKeyPage"), operation_id="v1_api_keys_list")
    def get(self, request):
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.api_key_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(ApiKeyOutputSerializer(page, many=True).data)

    @extend_schema(request=ApiKeyInputSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request):
        data = ApiKeyInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = api_key_create(user=request.user, **data.validated_data)
        body = {**ApiKeyOutputSerializer(issued.api_key).data, "key": issued.key}
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(APIView):
    @extend_schema(request=None, responses=ApiKeyOutputSerializer)
    def post(self, request, api_key_id: int):
        api_key = api_key_revoke(api_key=selectors.api_key_get(user=request.user, api_key_id=api_key_id))
        return Response(ApiKeyOutputSerializer(api_key).data)
