"""URL converters: `<id:name>` is a row id, 1 to 18 digits, so it always fits a bigint. A longer
number cannot name a row: the URL does not match and the answer is a 404, not a database error."""

from django.urls import register_converter


class IdConverter:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(int(value))


register_converter(IdConverter, "id")
