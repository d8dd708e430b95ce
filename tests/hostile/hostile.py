"""Hostile requests for every field of every operation of both APIs, built from their own OpenAPI
schemas: one valid baseline request per operation, then one field (a body property, an item of a
list, a key or value of the context, a query or path parameter, a header) replaced with a hostile
value. Used by tests/hostile/test_hostile_fields.py (which asserts) and bench/hostile.py (which
counts)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from hypothesis import strategies as st

# A placeholder a JSON body carries where raw JSON text (too deep to build as Python objects) goes.
_RAW = "\x00raw-json\x00"


@dataclass(frozen=True)
class RawJSON:
    """JSON text spliced into a body as it is: nesting deeper than Python's encoder can write."""

    text: str

    def __repr__(self):
        return f"RawJSON({self.text[:20]}…{len(self.text)} chars)"


def deep(depth: int) -> RawJSON:
    return RawJSON("[" * depth + "]" * depth)


def deep_object(depth: int) -> RawJSON:
    return RawJSON('{"a":' * depth + "1" + "}" * depth)


# Characters no stored string may hold: NUL, the other C0 and C1 controls, lone surrogates.
NUL = "\x00"
CONTROLS = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, *range(0x80, 0xA0))]
SURROGATES = ["\ud800", "\udfff", "\udc80"]

NASTY_STRINGS = [
    NUL,
    "a\x00b",
    "\x00" * 10,
    "\x1b[31mred",
    "\x7f",
    "\x85",
    "\x9f",
    "\ud800",
    "x\udfffy",
    "\udc80\ud800",
    "\u2028",
    "\u2029",
    "\r\n",
    "\t",
    "\ufeff",
    "\ufffe",
    "\U0010ffff",
    "🎉" * 300,
    "a" * 255,
    "a" * 10_000,
    "a" * 250 + "@example.com",
    "x@" + "a" * 250 + ".com",
    "%00",
    "%s%s%n",
    "{{ settings.SECRET_KEY }}",
    "{% debug %}",
    "' OR 1=1 --",
    "<script>",
    "",
    " ",
    "null",
    "-1",
    "1e999",
    "NaN",
]
NASTY_NUMBERS = [
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    10**30,
    -(2**63) - 1,
    -1,
    0,
    1.5,
    -0.0,
    1e308,
    RawJSON("9" * 5000),
    RawJSON("1e999999"),
    True,
    False,
]
NASTY_DATES = [
    "2026-02-30",
    "2026-02-29T00:00:00",
    "2026-13-01",
    "2026-00-10",
    "0000-01-01",
    "0001-01-01",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31",
    "9999-12-31T23:59:59.999999",
    "9999-12-31T23:59:59-14:00",
    "10000-01-01",
    "2026-01-01T24:00:00",
    "2026-01-01T23:60:00",
    "2026-01-01T00:00:00+25:00",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00-99:99",
    "2026-01-01T00:00:00+14:01",
    "2026-01-01T00:00:00.9999999999",
    "2026-1-1",
    "2026-01-01 00:00:00 +01:00",
    "-2026-01-01",
    "2026-W01-1",
    "T",
    ":",
]


def _with_nasty(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Ordinary text with one nasty character somewhere inside."""
    nasty = st.sampled_from(CONTROLS + SURROGATES + ["\u2028", "\ufffe"])
    return st.tuples(text, nasty, text).map("".join)


hostile_strings = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    _with_nasty(st.text(max_size=8)),
    st.text(alphabet=st.characters(categories=["Cc", "Cs", "Zl", "Zp", "Cf"]), min_size=1, max_size=12),
    st.integers(min_value=200, max_value=3000).map(lambda n: "é" * n),
)
hostile_numbers = st.one_of(
    st.sampled_from(NASTY_NUMBERS),
    st.integers(min_value=2**63, max_value=2**80),
    st.integers(max_value=-1),
    st.floats(allow_nan=False, allow_infinity=False),
)
hostile_dates = st.sampled_from(NASTY_DATES)
hostile_structures = st.one_of(
    st.sampled_from([deep(10_000), deep_object(5_000), deep(200), [], {}, None]),
    st.lists(hostile_strings, min_size=1, max_size=3),
    st.dictionaries(hostile_strings, hostile_strings, min_size=1, max_size=2),
)
hostile_values = st.one_of(hostile_strings, hostile_numbers, hostile_dates, hostile_structures)


def encode(body) -> bytes:
    """JSON for `body`, with RawJSON placeholders spliced in; lone surrogates stay escaped
    (\\ud800), as a client's JSON encoder writes them."""
    raws: list[str] = []

    def lift(value):
        if isinstance(value, RawJSON):
            raws.append(value.text)
            return _RAW
        if isinstance(value, dict):
            return {(k if isinstance(k, str) else json.dumps(k)): lift(v) for k, v in value.items()}
        if isinstance(value, list):
            return [lift(v) for v in value]
        return value

    text = json.dumps(lift(body))
    for raw in raws:
        text = text.replace(json.dumps(_RAW), raw, 1)
    return text.encode()


# Operations ------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict = field(default_factory=dict)  # name -> str or list of str
    body: object = None  # JSON-able, or bytes sent as they are
    headers: dict = field(default_factory=dict)  # WSGI keys: HTTP_AUTHORIZATION ...
    target: str = ""  # the field made hostile, e.g. "body.context", "query.start_time"


@dataclass(frozen=True)
class Fixture:
    """What the baselines refer to: existing rows and a staff token."""

    token: str
    template_id: int
    email_id: int
    api_key_id: int = 1
    webhook_endpoint_id: int = 1
    webhook_message_id: str = "00000000-0000-4000-8000-000000000001"


def baselines(fx: Fixture) -> dict[tuple[str, str], Request]:
    """A request each operation accepts, keyed by (method, schema path)."""
    unique = uuid.uuid4().hex[:10]
    since = "2026-01-01T00:00:00Z"
    return {
        ("GET", "/api/v1/emails/email-template/"): Request("GET", "/api/v1/emails/email-template/", {"page": "1"}),
        ("POST", "/api/v1/emails/email-template/"): Request(
            "POST",
            "/api/v1/emails/email-template/",
            body={"name": f"t-{unique}", "subject": "Hi {{ name }}", "body": "<p>{{ name }}</p>"},
        ),
        ("GET", "/api/v1/emails/email-template/{template_id}/"): Request(
            "GET", f"/api/v1/emails/email-template/{fx.template_id}/"
        ),
        ("PUT", "/api/v1/emails/email-template/{template_id}/"): Request(
            "PUT",
            f"/api/v1/emails/email-template/{fx.template_id}/",
            body={"name": f"t-{unique}", "subject": "Hi {{ name }}", "body": "<p>{{ name }}</p>"},
        ),
        ("PATCH", "/api/v1/emails/email-template/{template_id}/"): Request(
            "PATCH", f"/api/v1/emails/email-template/{fx.template_id}/", body={"subject": "Hey {{ name }}"}
        ),
        ("DELETE", "/api/v1/emails/email-template/{template_id}/"): Request(
            "DELETE", f"/api/v1/emails/email-template/{fx.template_id}/"
        ),
        ("POST", "/api/v1/emails/sent-email/"): Request(
            "POST",
            "/api/v1/emails/sent-email/",
            headers={"HTTP_IDEMPOTENCY_KEY": f"k-{unique}"},
            body={
                "recipients": ["ann@example.com", "bob@example.org"],
                "template": fx.template_id,
                "context": {"name": "Ann", "items": [1, 2]},
            },
        ),
        ("POST", "/api/v1/emails/sent-email/{email_id}/cancel/"): Request(
            "POST", f"/api/v1/emails/sent-email/{fx.email_id}/cancel/"
        ),
        ("GET", "/api/v1/ops/outbox/"): Request(
            "GET",
            "/api/v1/ops/outbox/",
            {
                "aggregate_id": str(fx.email_id),
                "event_id": [str(uuid.uuid4())],
                "event_type": "email.requested",
                "failing": "false",
                "since": since,
                "until": "2099-01-01T00:00:00Z",
                "state": "pending",
                "page": "1",
            },
        ),
        ("POST", "/api/v1/ops/outbox/replay/"): Request(
            "POST",
            "/api/v1/ops/outbox/replay/",
            body={
                "aggregate_id": str(fx.email_id),
                "event_ids": [str(uuid.uuid4())],
                "event_type": "email.requested",
                "since": since,
                "until": "2099-01-01T00:00:00Z",
                "dry_run": True,
                "reason": "check",
            },
        ),
        ("GET", "/api/v1/ops/outbox/status/"): Request("GET", "/api/v1/ops/outbox/status/"),
        ("GET", "/api/v1/suppressions/"): Request(
            "GET", "/api/v1/suppressions/", {"address": "kept@example.com", "reason": "manual", "page": "1"}
        ),
        ("POST", "/api/v1/suppressions/"): Request(
            "POST",
            "/api/v1/suppressions/",
            body={"address": f"s-{unique}@example.com", "reason": "manual", "detail": "check"},
        ),
        # The fixture's staff user has kept@example.com on its list.
        ("DELETE", "/api/v1/suppressions/{address}/"): Request("DELETE", "/api/v1/suppressions/kept@example.com/"),
        ("GET", "/api/v1/ops/deliveries/"): Request(
            "GET", "/api/v1/ops/deliveries/", {"state": "failed", "email_id": str(fx.email_id), "page": "1"}
        ),
        ("POST", "/api/v1/ops/deliveries/redrive/"): Request(
            "POST",
            "/api/v1/ops/deliveries/redrive/",
            body={
                "email_ids": [fx.email_id],
                "event_ids": [str(uuid.uuid4())],
                "states": ["failed"],
                "since": since,
                "until": "2099-01-01T00:00:00Z",
                "dry_run": True,
                "reason": "check",
            },
        ),
        ("GET", "/api/v1/ops/dead-letters/"): Request(
            "GET", "/api/v1/ops/dead-letters/", {"resolution": "parked", "page": "1"}
        ),
        ("POST", "/api/v1/ops/dead-letters/redrive/"): Request(
            "POST", "/api/v1/ops/dead-letters/redrive/", body={"ids": [1], "dry_run": True, "reason": "check"}
        ),
        ("POST", "/api/v1/ops/dead-letters/dismiss/"): Request(
            "POST", "/api/v1/ops/dead-letters/dismiss/", body={"ids": [1], "dry_run": True, "reason": "check"}
        ),
        ("GET", "/api/v1/api-keys/"): Request("GET", "/api/v1/api-keys/", {"page": "1"}),
        ("POST", "/api/v1/api-keys/"): Request(
            "POST",
            "/api/v1/api-keys/",
            body={"name": f"key-{unique}", "scopes": ["send", "read"], "rate_limit_per_minute": 120},
        ),
        ("POST", "/api/v1/api-keys/{api_key_id}/revoke/"): Request("POST", f"/api/v1/api-keys/{fx.api_key_id}/revoke/"),
        ("POST", "/api/v1/users/login/"): Request(
            "POST", "/api/v1/users/login/", body={"username": f"nobody-{unique}@example.com", "password": "x"}
        ),
        ("POST", "/api/v1/users/logout/"): Request("POST", "/api/v1/users/logout/"),
        ("POST", "/api/v1/users/register/"): Request(
            "POST",
            "/api/v1/users/register/",
            body={"email": f"u-{unique}@example.com", "username": f"u-{unique}", "password": "quiet-meadow-Lantern-42"},
        ),
        ("POST", "/api/v1/webhooks/sendgrid/"): Request("POST", "/api/v1/webhooks/sendgrid/", body=[]),
        ("GET", "/api/v1/emails/sent-email/"): Request(
            "GET",
            "/api/v1/emails/sent-email/",
            {
                "recipient": ["ann@example.com"],
                "start_time": "2026-01-01",
                "end_time": "2099-01-01T00:00:00Z",
                "status": ["sent"],
                "template": [str(fx.template_id)],
                "page_size": "10",
            },
        ),
        ("GET", "/api/v1/emails/sent-email/{email_id}/"): Request("GET", f"/api/v1/emails/sent-email/{fx.email_id}/"),
        **webhook_endpoint_baselines(fx, since),
    }


def webhook_endpoint_baselines(fx: Fixture, since: str) -> dict[tuple[str, str], Request]:
    """The client webhooks' endpoint API (an IP literal for the URL: no DNS lookup in the tests)."""
    base = "/api/v1/webhook-endpoints/"
    endpoint = f"{base}{fx.webhook_endpoint_id}/"
    return {
        ("GET", base): Request("GET", base, {"page": "1"}),
        ("POST", base): Request(
            "POST",
            base,
            body={
                "url": "https://93.184.216.34/hooks?x=1",
                "description": "mine",
                "event_types": ["email.sent", "email.delivered"],
                "enabled": True,
            },
        ),
        ("GET", f"{base}{{endpoint_id}}/"): Request("GET", endpoint),
        ("PATCH", f"{base}{{endpoint_id}}/"): Request(
            "PATCH", endpoint, body={"description": "changed", "event_types": ["email.bounced"], "enabled": True}
        ),
        ("DELETE", f"{base}{{endpoint_id}}/"): Request("DELETE", endpoint),
        ("POST", f"{base}{{endpoint_id}}/rotate-secret/"): Request("POST", f"{endpoint}rotate-secret/"),
        ("GET", f"{base}{{endpoint_id}}/messages/"): Request(
            "GET", f"{endpoint}messages/", {"state": "pending", "email_id": str(fx.email_id), "since": since}
        ),
        ("POST", f"{base}{{endpoint_id}}/messages/{{message_id}}/replay/"): Request(
            "POST", f"{endpoint}messages/{fx.webhook_message_id}/replay/"
        ),
        ("POST", f"{base}{{endpoint_id}}/replay/"): Request(
            "POST", f"{endpoint}replay/", body={"since": since, "state": "failed"}
        ),
    }


def operations(schema: dict) -> list[tuple[str, str, dict]]:
    """(method, path, operation) of every operation in an OpenAPI document."""
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                found.append((method.upper(), path, operation))
    return found


def targets(schema: dict, method: str, path: str, operation: dict, base: Request) -> list[str]:
    """Every field of the operation a hostile value can go into: each request body property (and
    for lists and objects, an item, a key and a value inside), each query and path parameter,
    the headers it reads; plus the whole body."""
    found = ["header.HTTP_AUTHORIZATION", "header.HTTP_X_CORRELATION_ID", "header.CONTENT_TYPE", "body.raw"]
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content:
        body_schema = _resolve(schema, content["schema"])
        for name, prop in body_schema.get("properties", {}).items():
            prop = _resolve(schema, prop)
            found.append(f"body.{name}")
            if prop.get("type") == "array":
                found.append(f"body.{name}.item")
            if prop.get("type") == "object" or "additionalProperties" in prop:
                found += [f"body.{name}.key", f"body.{name}.value", f"body.{name}.nested"]
        if isinstance(base.body, list) or body_schema.get("type") == "array":
            found.append("body.item")
    for parameter in operation.get("parameters", []):
        where = {"query": "query", "path": "path", "header": "header"}.get(parameter["in"])
        if where == "header":
            found.append("header.HTTP_" + parameter["name"].upper().replace("-", "_"))
        elif where:
            found.append(f"{where}.{parameter['name']}")
    if method == "GET" and path.rsplit("/emails/", 1)[-1] == "sent-email/":
        found.append("query.cursor")  # the log's cursor pagination; not a documented parameter
    return found


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def apply(base: Request, target: str, value) -> Request:
    """`base` with `value` in `target` (see targets())."""
    request = Request(base.method, base.path, dict(base.query), _copy(base.body), dict(base.headers), target)
    where, _, name = target.partition(".")
    if where == "header":
        # A WSGI server hands header bytes over as latin-1 text: what the app sees of these bytes.
        # Text of code points up to 255 stands for those bytes as they are.
        text = value if isinstance(value, str) else json.dumps(value)
        if any(ord(c) > 255 for c in text):
            text = text.encode("utf-8", "surrogatepass").decode("latin-1")
        request.headers[name] = text
    elif where == "query":
        request.query[name] = value if isinstance(value, list) else str(value) if not isinstance(value, str) else value
        if isinstance(value, list):
            request.query[name] = [v if isinstance(v, str) else json.dumps(v) for v in value]
    elif where == "path":
        # The path's id: the part after the collection, replaced by the hostile value's text.
        parts = request.path.rstrip("/").split("/")
        parts[-1] = _path_text(value)
        request.path = "/".join(parts) + "/"
    elif target == "body.raw":
        request.body = value if isinstance(value, (bytes, RawJSON)) else value
    elif target == "body.item":
        request.body = [value]
    else:
        prop, _, inner = name.partition(".")
        body = request.body if isinstance(request.body, dict) else {}
        if not inner:
            body[prop] = value
        elif inner == "item":
            current = body.get(prop) if isinstance(body.get(prop), list) else []
            body[prop] = [*current[:1], value]
        elif inner == "key":
            body[prop] = {_key_text(value): "x"}
        elif inner == "value":
            body[prop] = {"name": value}
        elif inner == "nested":
            body[prop] = {"name": "x", "items": [{"deep": value}]}
        request.body = body
    return request


def _key_text(value) -> str:
    if isinstance(value, str):
        return value
    return value.text[:50] if isinstance(value, RawJSON) else json.dumps(value)


def _path_text(value) -> str:
    from urllib.parse import quote

    return quote(_key_text(value), safe="", errors="surrogatepass") or "0"


def _copy(body):
    return json.loads(json.dumps(body)) if body is not None and not isinstance(body, (bytes, RawJSON)) else body


RAW_BODIES = [
    b"\xff\xfe\xfd",
    b'{"name": "\xc3\x28"}',
    b'{"recipients": ["\xed\xa0\x80@example.com"]}',
    b"\xc0\xaf",
    b'{"a": 1',
    b"[" * 100_000,
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b"\x00",
    b'{"\\u0000": 1}',
    b'"\\ud800"',
    b'{"template": 1e999}',
]
CONTENT_TYPES = [
    "application/json; charset=punycode",
    "application/json; charset=utf-16",
    "application/json; charset=nonsense",
    "application/json; charset=latin-1",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=punycode",
    "multipart/form-data; boundary=x",
    "multipart/form-data",
    "text/plain",
    "application/json\x00",
    "",
]
HOSTILE_AUTHORIZATION = [
    "Token \xff\xfe\xfd",
    "Token " + "\xe9" * 20,
    "Token \x00",
    "Token " + "a" * 10_000,
    "Bearer abc",
    "Basic Zm9vOmJhcg==",
    "Token",
    "Token a b",
    "Digest username=x",
    "\x00",
    "Token %00",
    # Shaped like an API key (ek_…), but not one.
    "Token ek_",
    "Bearer ek_",
    "Bearer ek_0123456789ab_" + "0" * 64,
    "Token ek_0123456789ab_" + "0" * 63 + "\x00",
    "Token ek_" + "f" * 10_000,
    "Bearer ek_\xff\xfe",
]


def hostile_for(target: str) -> st.SearchStrategy:
    """The values worth trying in `target`."""
    if target == "body.raw":
        return st.one_of(
            st.sampled_from(RAW_BODIES),
            st.sampled_from([deep(100_000), deep_object(100_000)]),
            st.binary(min_size=1, max_size=20),
        )
    if target == "header.HTTP_AUTHORIZATION":
        return st.one_of(
            st.sampled_from(HOSTILE_AUTHORIZATION),
            st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40).map(
                lambda t: "Token " + t
            ),
            st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=80).map(
                lambda t: "Bearer ek_" + t
            ),
        )
    if target == "header.CONTENT_TYPE":
        return st.one_of(st.sampled_from(CONTENT_TYPES), st.sampled_from(NASTY_STRINGS[:20]))
    if target.startswith("header."):
        return st.one_of(
            st.sampled_from(NASTY_STRINGS[:20]),
            st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=300),
        )
    return hostile_values


def to_client_kwargs(request: Request) -> dict:
    """The keyword arguments of django.test.Client.generic for `request`."""
    from urllib.parse import urlencode

    query = urlencode(
        [(k, v) for k, values in request.query.items() for v in (values if isinstance(values, list) else [values])],
        doseq=False,
        encoding="utf-8",
        errors="surrogatepass",
    )
    if request.body is None:
        data = b""
    elif isinstance(request.body, bytes):
        data = request.body
    else:
        data = encode(request.body)
    headers = dict(request.headers)
    content_type = headers.pop("CONTENT_TYPE", "application/json")
    return {
        "method": request.method,
        "path": request.path + (f"?{query}" if query else ""),
        "data": data,
        "content_type": content_type,
        **headers,
    }
