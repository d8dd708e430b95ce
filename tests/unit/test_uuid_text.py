"""core.text.uuid_text: a UUID from a client as Postgres writes it, or None."""

import uuid

import pytest

from core.text import uuid_text

CANONICAL = "0b6f1d2e-3c4a-4b5c-8d6e-7f8091a2b3c4"


@pytest.mark.parametrize(
    "value",
    [
        CANONICAL,
        CANONICAL.upper(),
        CANONICAL[:9] + CANONICAL[9:].upper(),
        "{" + CANONICAL + "}",
        "urn:uuid:" + CANONICAL,
        CANONICAL.replace("-", ""),
    ],
)
def test_any_form_of_a_uuid_comes_back_as_postgres_writes_it(value):
    assert uuid_text(value) == CANONICAL


@pytest.mark.parametrize(
    "value",
    [None, "", "not-a-uuid", CANONICAL + "\n", CANONICAL[:-1], CANONICAL + "0", 42, 4.2, True, [CANONICAL], {"id": 1}]
    # Not even 32 digits as a JSON number (SendGrid's custom_args are strings; ours are UUID text).
    + [int(CANONICAL.replace("-", "").translate(str.maketrans("abcdef", "123456")))],
)
def test_anything_else_is_none(value):
    assert uuid_text(value) is None


def test_it_agrees_with_the_uuid_module_on_random_ids():
    for _ in range(200):
        value = uuid.uuid4()
        assert uuid_text(str(value)) == str(value)
        assert uuid_text(value.hex.upper()) == str(value)
