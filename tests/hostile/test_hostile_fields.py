"""A hostile value in every field of every request of both APIs (see tests/hostile/hostile.py):
never a 5xx; every refusal in the shared shape, a 400 naming the field; nothing written."""

import pytest
from django.db import transaction
from django.test import Client, override_settings
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile import hostile
from tests.hostile.conftest import write_counts

APIS = {"command": "command_api.urls", "query": "query_api.urls"}


def _cases():
    for api, urlconf in APIS.items():
        schema = SchemaGenerator(urlconf=urlconf).get_schema(request=None, public=True)
        fixture = hostile.Fixture(token="", template_id=1, email_id=1)
        bases = hostile.baselines(fixture)
        for method, path, operation in hostile.operations(schema):
            assert (method, path) in bases, f"no baseline request for {method} {path}: add one to hostile.baselines"
            for target in hostile.targets(schema, method, path, operation, bases[(method, path)]):
                yield pytest.param(api, method, path, target, id=f"{api}:{method}:{path}:{target}")


CASES = list(_cases())


class Rollback(Exception):
    pass


def call(client: Client, urlconf: str, request: hostile.Request):
    """One request in a savepoint that is rolled back: each example starts from the same rows.
    (status, json or None, rows written by the request)."""
    result = {}
    try:
        with transaction.atomic(), override_settings(ROOT_URLCONF=urlconf):
            before = write_counts()
            response = client.generic(**hostile.to_client_kwargs(request))
            result["written"] = write_counts() != before
            result["status"] = response.status_code
            try:
                result["json"] = response.json()
            except (ValueError, TypeError):  # not JSON, or no body at all
                result["json"] = None
            raise Rollback
    except Rollback:
        pass
    return result["status"], result["json"], result["written"]


def names_field(errors: dict, target: str, path: str) -> bool:
    if path.endswith("/login/") and list(errors) == ["non_field_errors"]:
        return True  # wrong credentials: the answer does not say which part was wrong
    where, _, name = target.partition(".")
    field = name.split(".")[0]
    header = {"HTTP_IDEMPOTENCY_KEY": "Idempotency-Key"}.get(field)
    # A valid bound can still be refused for its partner: a start after the end names the end.
    wanted = {header or field, *PARTNERS.get(field, ())}
    return any(key in wanted or key.split(".")[0] in wanted for key in errors)


PARTNERS = {"start_time": ("end_time",), "end_time": ("start_time",), "since": ("until",), "until": ("since",)}


@pytest.mark.parametrize("api, method, path, target", CASES)
@pytest.mark.django_db
def test_a_hostile_value_is_refused_cleanly(hostile_fixture, api, method, path, target):
    client = Client(raise_request_exception=False)
    base = hostile.baselines(hostile_fixture)[(method, path)]
    base.headers.setdefault("HTTP_AUTHORIZATION", f"Token {hostile_fixture.token}")

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(value=hostile.hostile_for(target), data=st.data())
    def check(value, data):
        request = hostile.apply(base, target, value)
        status, body, written = call(client, APIS[api], request)
        assert status < 500, f"{request.method} {request.path} {target}={value!r}: {status} {body}"
        if status >= 400:
            assert (
                isinstance(body, dict) and isinstance(body.get("message"), str) and isinstance(body.get("errors"), dict)
            ), f"{target}={value!r}: {status} {body}"
            assert not written, f"{target}={value!r} answered {status} but wrote rows"
        if status == 400 and target.startswith(("body.", "query.")) and target != "body.raw" and target != "body.item":
            assert names_field(body["errors"], target, path), f"{target}={value!r}: {body}"

    check()
