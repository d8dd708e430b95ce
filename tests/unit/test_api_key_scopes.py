"""Which endpoints of both APIs an API key reaches, and that each of them counts the key's own
rate limit. A key is refused wherever a view names no `api_key_scope`, so opening an endpoint to
keys is a deliberate change: it shows up here."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.settings import api_settings

from core.accounts.models import ApiKeyScope
from core.accounts.throttling import ApiKeyRateThrottle

OPEN_TO_KEYS = {
    ("command_api.urls", "EmailTemplateListCreateApi"): ApiKeyScope.TEMPLATES,
    ("command_api.urls", "EmailTemplateDetailApi"): ApiKeyScope.TEMPLATES,
    ("command_api.urls", "SentEmailCreateApi"): ApiKeyScope.SEND,
    ("command_api.urls", "SentEmailCancelApi"): ApiKeyScope.SEND,
    ("query_api.urls", "SentEmailListApi"): ApiKeyScope.READ,
    ("query_api.urls", "SentEmailDetailApi"): ApiKeyScope.READ,
}


def views(urlconf: str):
    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns)
            elif isinstance(pattern, URLPattern) and hasattr(pattern.callback, "view_class"):
                yield pattern.callback.view_class

    return set(walk(get_resolver(urlconf).url_patterns))


@pytest.mark.parametrize("urlconf", ["command_api.urls", "query_api.urls"])
def test_only_the_listed_endpoints_take_keys_each_with_its_scope_and_the_keys_limit(urlconf):
    found = {}
    for view in views(urlconf):
        scope = getattr(view, "api_key_scope", None)
        if scope is None:
            continue
        found[(urlconf, view.__name__)] = scope
        scopes = scope.values() if isinstance(scope, dict) else [scope]
        assert all(s in ApiKeyScope.values for s in scopes), (view, scope)
        # A view with throttle classes of its own must keep the key's.
        assert any(issubclass(t, ApiKeyRateThrottle) for t in view.throttle_classes), view
    assert found == {k: v for k, v in OPEN_TO_KEYS.items() if k[0] == urlconf}


def test_the_key_throttle_is_a_default_for_every_view():
    assert ApiKeyRateThrottle in api_settings.DEFAULT_THROTTLE_CLASSES
