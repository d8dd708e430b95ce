"""The paginated envelopes, declared for the OpenAPI schema (APIViews paginate by hand, so
drf-spectacular cannot see it)."""

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers


def page_of(item_serializer, *, name: str, cursor: bool = False):
    fields = {
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": item_serializer(many=True),
    }
    if not cursor:
        fields["count"] = serializers.IntegerField()
    return inline_serializer(name, fields)
