from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from core.errors import ApplicationError
from core.suppressions.models import Suppression
from core.suppressions.services import normalize_address


class SuppressionForm(forms.ModelForm):
    class Meta:
        model = Suppression
        fields = ("owner", "address", "reason", "detail")

    def clean_address(self):
        # Kept as the sender compares it: trimmed and lower-cased.
        try:
            return normalize_address(self.cleaned_data["address"])
        except ApplicationError as exc:
            raise ValidationError(exc.errors["address"][0]) from None


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """Ops add and remove any account's suppressions here (deleting one lets later sends go)."""

    form = SuppressionForm
    list_display = ("address", "owner", "reason", "source", "created_at", "email_id")
    list_filter = ("reason", "source")
    search_fields = ("address", "=owner__email")
    raw_id_fields = ("owner",)
    readonly_fields = ("source", "email_id", "created_at")
    list_select_related = ("owner",)

    def get_readonly_fields(self, request, obj=None):
        # An entry is added or removed, not edited: the sender compares its address.
        return (*self.readonly_fields, "owner", "address") if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if not change:
            obj.source = Suppression.Source.ADMIN
        super().save_model(request, obj, form, change)
