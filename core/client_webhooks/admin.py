from django.contrib import admin, messages

from core.client_webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from core.client_webhooks.services import webhook_messages_replay


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "url", "enabled", "failing_since", "disabled_reason", "created_at")
    list_filter = ("enabled",)
    search_fields = ("=id", "owner__email", "url")
    list_select_related = ("owner",)
    exclude = ("secret", "previous_secret")  # signing keys are not for staff to read
    readonly_fields = ("owner", "failing_since", "disabled_at", "previous_secret_expires_at", "created_at")

    def has_add_permission(self, request):
        return False  # endpoints are registered by their owners, through the API, which checks the URL


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = ("attempted_at", "status_code", "duration_ms", "response", "error")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookMessage)
class WebhookMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "endpoint", "event_type", "email_id", "sequence", "state", "attempts", "next_attempt_at")
    list_filter = ("state", "event_type")
    search_fields = ("=id", "=email_id", "=endpoint__id")
    list_select_related = ("endpoint",)
    readonly_fields = [f.name for f in WebhookMessage._meta.fields]
    inlines = [WebhookAttemptInline]
    actions = ["replay_selected"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Deliver the selected messages again")
    def replay_selected(self, request, queryset):
        replayed = 0
        for endpoint_id in queryset.values_list("endpoint_id", flat=True).distinct():
            ids = [str(pk) for pk in queryset.filter(endpoint_id=endpoint_id).values_list("pk", flat=True)]
            endpoint = WebhookEndpoint.objects.get(pk=endpoint_id)
            replayed += webhook_messages_replay(endpoint=endpoint, message_ids=ids)
        self.message_user(request, f"{replayed} messages queued for delivery again.", messages.SUCCESS)
