"""The request body parser of both APIs: JSON only, strictly UTF-8 (RFC 8259 allows no other
encoding, so a declared charset is not believed), no NaN or Infinity, numbers that fit a column,
bounded nesting, and no string a field could not store (see core.text). Every refusal is a 400,
naming the field when there is one."""

import json

from django.conf import settings
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser as DRFJSONParser

from core.text import OutOfRange, deep_path, first_problem


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


class JSONParser(DRFJSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"The body is not valid utf-8: byte {exc.start} cannot be decoded.") from None
        try:
            data = json.loads(
                text,
                parse_constant=_refuse_constant,
                parse_int=OutOfRange.parse_int,
                parse_float=OutOfRange.parse_float,
            )
        except RecursionError:
            depth = settings.REQUEST_MAX_JSON_DEPTH
            reason = f"It is nested deeper than {depth} levels."
            raise ValidationError({deep_path(text, max_depth=depth): [reason]}) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if found := first_problem(data, max_depth=settings.REQUEST_MAX_JSON_DEPTH, text=text):
            field, reason = found
            raise ValidationError({field: [reason]})
        return data
