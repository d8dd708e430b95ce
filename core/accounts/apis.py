from django.conf import settings
from django.contrib.auth.validators import UnicodeUsernameValidator
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from core.accounts.services import user_login, user_logout, user_register
from core.middleware import client_address
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
