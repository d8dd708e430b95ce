"""Counts what bad input does to both APIs, in-process, on a database of its own: how many
requests each generator tried, the answers by status, and every 5xx with its operation and
exception. It asserts nothing (tests/hostile/ does); it gives the figures.

    .venv/bin/python bench/hostile.py [--examples 40] [--schemathesis-examples 100]

Generators:
- hostile: tests/hostile/hostile.py, a hostile value (NUL, control characters, lone surrogates,
  over-long strings, numbers beyond bigint, impossible dates and offsets, deep nesting, invalid
  UTF-8, undecodable headers) in every field of every operation, `--examples` per field;
- schemathesis: each operation of each API's own OpenAPI schema, in positive and in negative
  mode, `--schemathesis-examples` per operation and mode.
"""

import argparse
import collections
import contextlib
import os
import sys
import time
import warnings

from common import ROOT

sys.path.insert(0, str(ROOT))


class Rollback(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=40, help="hostile values per field")
    parser.add_argument("--schemathesis-examples", type=int, default=100, help="cases per operation and mode")
    args = parser.parse_args()
    os.environ.update(
        {"POSTGRES_DB": "emails_bench_hostile", "DJANGO_SETTINGS_MODULE": "tests.settings", "LOG_LEVEL": "CRITICAL"}
    )
    import django

    django.setup()
    import logging

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        fixture = make_fixture()
        for name, run in (
            ("hostile", lambda: run_hostile(fixture, args.examples)),
            ("schemathesis", lambda: run_schemathesis(fixture, args.schemathesis_examples)),
        ):
            started = time.monotonic()
            tally = run()
            report(name, tally, time.monotonic() - started)
    finally:
        connection.creation.destroy_test_db("test_emails_bench_hostile", verbosity=0)


class Tally:
    def __init__(self):
        self.statuses = collections.Counter()
        self.errors = collections.Counter()  # (operation, exception type) -> count
        self.examples = {}  # (operation, exception type) -> one message

    def add(self, operation: str, status: int, exception: str | None) -> None:
        self.statuses[status] += 1
        if status >= 500:
            kind = (exception or f"HTTP {status}").split(":")[0]
            self.errors[(operation, kind)] += 1
            self.examples.setdefault((operation, kind), exception or "")


def make_fixture():
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from django.conf import settings
    from django.utils import timezone
    from knox.models import AuthToken

    from query_api.models import SentEmailLog
    from tests.factories import EmailTemplateFactory, UserFactory
    from tests.hostile.hostile import Fixture

    # A configured webhook key: an unsigned post is then a 403, not a 503 (no key).
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    settings.SENDGRID_WEBHOOK_PUBLIC_KEY = base64.b64encode(der).decode()
    user = UserFactory(is_staff=True)
    template = EmailTemplateFactory()
    email = SentEmailLog.objects.create(
        id=424242,
        owner_id=user.pk,
        recipients=["ann@example.com"],
        created=timezone.now(),
        status="sent",
        template_id=template.pk,
        recipient_status={"ann@example.com": {"status": "sent"}},
    )
    _, token = AuthToken.objects.create(user=user)
    from tests.hostile.conftest import webhook_endpoint_with_message

    endpoint, message = webhook_endpoint_with_message(user, email.pk)
    return Fixture(
        token=token,
        template_id=template.pk,
        email_id=email.pk,
        webhook_endpoint_id=endpoint.pk,
        webhook_message_id=str(message.pk),
    )


class Exceptions:
    """The exception of the request being made, from Django's got_request_exception signal."""

    def __init__(self):
        from django.core.signals import got_request_exception

        self.last = None
        got_request_exception.connect(self._record, weak=False)

    def _record(self, sender, request=None, **kwargs):
        kind, value, _ = sys.exc_info()
        self.last = f"{kind.__name__}: {str(value)[:80]}" if kind else None

    def take(self):
        last, self.last = self.last, None
        return last


def rolled_back(call):
    """Run `call` in a savepoint that is rolled back; its result."""
    from django.db import transaction

    box = []
    try:
        with transaction.atomic():
            box.append(call())
            raise Rollback
    except Rollback:
        pass
    return box[0]


def run_hostile(fixture, examples: int) -> Tally:
    from django.test import Client
    from drf_spectacular.generators import SchemaGenerator

    from tests.hostile import hostile

    tally, exceptions = Tally(), Exceptions()
    client = Client(raise_request_exception=False)
    for urlconf in ("command_api.urls", "query_api.urls"):
        schema = SchemaGenerator(urlconf=urlconf).get_schema(request=None, public=True)
        for method, path, operation in hostile.operations(schema):
            base = hostile.baselines(fixture).get((method, path))
            if base is None:
                continue
            base.headers.setdefault("HTTP_AUTHORIZATION", f"Token {fixture.token}")
            for target in hostile.targets(schema, method, path, operation, base):
                fuzz_field(client, urlconf, base, target, f"{method} {path}", tally, exceptions, examples)
    return tally


def fuzz_field(client, urlconf, base, target, label, tally, exceptions, examples) -> None:
    """`examples` hostile values in `target` of `base`, each answer counted."""
    from django.test import override_settings
    from hypothesis import HealthCheck, given, settings

    from tests.hostile import hostile

    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(value=hostile.hostile_for(target))
    def send(value):
        request = hostile.apply(base, target, value)

        def call():
            with override_settings(ROOT_URLCONF=urlconf):
                return client.generic(**hostile.to_client_kwargs(request)).status_code

        tally.add(label, rolled_back(call), exceptions.take())

    send()


def run_schemathesis(fixture, examples: int) -> Tally:
    import schemathesis
    from django.core import signals
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import close_old_connections
    from schemathesis.generation.modes import GenerationMode

    class QueryApiWSGI(WSGIHandler):
        def get_response(self, request):
            request.urlconf = "query_api.urls"
            return super().get_response(request)

    # As Django's test client does (and reverts after each of its requests): a request must not
    # close the connection under the savepoints.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    tally, exceptions = Tally(), Exceptions()
    headers = {"Authorization": f"Token {fixture.token}"}
    for app in (WSGIHandler(), QueryApiWSGI()):
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", app)
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(operation, mode, headers, tally, exceptions, examples)
    return tally


def fuzz_operation(operation, mode, headers, tally, exceptions, examples) -> None:
    """`examples` cases of `operation` that schemathesis generates in `mode`, each answer counted."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case):
        status = rolled_back(lambda: case.call(headers=headers).status_code)
        tally.add(f"{operation.method.upper()} {operation.path}", status, exceptions.take())

    with contextlib.suppress(Unsatisfiable):  # nothing to break in this mode (an operation without input)
        send()


def report(name: str, tally: Tally, seconds: float) -> None:
    total = sum(tally.statuses.values())
    errors = sum(count for status, count in tally.statuses.items() if status >= 500)
    print(f"\n{name}: {total} requests in {seconds:.0f}s, {errors} answered 5xx")
    print("  by status: " + ", ".join(f"{status}: {count}" for status, count in sorted(tally.statuses.items())))
    for key, count in sorted(tally.errors.items(), key=lambda item: -item[1]):
        print(f"  5xx x{count:<4} {key[0]:48} {tally.examples[key][:90]}")


if __name__ == "__main__":
    main()
