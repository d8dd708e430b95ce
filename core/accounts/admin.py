from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from core.accounts.models import ApiKey, User
from core.accounts.services import api_key_revoke


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ("email",)
    list_display = ("email", "username", "is_staff", "is_active", "date_joined")
    search_fields = ("email", "username")
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "username", "password1", "password2")}),)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Ops see every user's keys and revoke any; they cannot make one (a key is shown once, to
    the user who makes it through the API), read one (only its digest is stored) or widen one."""

    list_display = (
        "id",
        "prefix",
        "name",
        "user",
        "scopes",
        "rate_limit_per_minute",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("=prefix", "name", "user__email")
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    fields = ("user", "name", "prefix", "scopes", "rate_limit_per_minute", "created_at", "last_used_at", "revoked_at")
    # Shown, not changed: a key's owner decides its name, scopes and limit when making it (a new
    # key is the way to change them); ops revoke.
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request, queryset):
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
