"""The request fields of both APIs that enforce core.text's rules: each refusal is a 400 naming
the field and the character."""

from django.conf import settings
from rest_framework import serializers

from core.text import first_problem, printable_key, text_problem


class LineField(serializers.CharField):
    """A single line of text: no control characters, line breaks or lone surrogates."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if problem := text_problem(value, single_line=True):
            raise serializers.ValidationError(problem)
        return value


class TextField(serializers.CharField):
    """Free text: line breaks and tabs, but no other control characters or lone surrogates."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if problem := text_problem(value):
            raise serializers.ValidationError(problem)
        return value


class AddressField(serializers.EmailField):
    """An email address (at most 254 characters, as SMTP allows) on one line: Django's validator
    lets control characters through inside a quoted local part."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 254)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if problem := text_problem(value, single_line=True):
            raise serializers.ValidationError(problem)
        return value


class JSONObjectField(serializers.DictField):
    """A JSON object from the client (an email's context): names are single lines of at most
    `max_key_length` characters, and anything inside is checked as the JSON parser checks a body
    (strings free text, numbers in range, nesting within REQUEST_MAX_JSON_DEPTH), so the field
    holds whatever parser read the request."""

    def __init__(self, *, max_key_length: int = 200, **kwargs):
        self.max_key_length = max_key_length
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if found := first_problem(value, max_depth=settings.REQUEST_MAX_JSON_DEPTH):
            raise serializers.ValidationError({found[0]: [found[1]]})
        for key in value:
            if (problem := text_problem(key, single_line=True)) or len(key) > self.max_key_length:
                raise serializers.ValidationError(
                    {
                        printable_key(key): [
                            f"Its name: {problem}"
                            if problem
                            else f"Names are at most {self.max_key_length} characters."
                        ]
                    }
                )
        return value
