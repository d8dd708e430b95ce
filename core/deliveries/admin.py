from django.contrib import admin, messages

from core.deliveries.models import Delivery, ProviderPause, Redrive
from core.deliveries.services import REDRIVABLE, RedriveSelection, deliveries_redrive


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "recipient",
        "email_id",
        "state",
        "attempts",
        "next_attempt_at",
        "provider_message_id",
        "provider_seen_at",
        "updated_at",
    )
    list_filter = ("state",)
    search_fields = ("=email_id", "=event_id", "recipient", "=provider_message_id")
    readonly_fields = [f.name for f in Delivery._meta.fields]
    actions = ["redrive_selected"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Re-drive the selected failed or held deliveries (send them again)")
    def redrive_selected(self, request, queryset):
        rows = queryset.filter(state__in=REDRIVABLE)
        event_ids = tuple(str(e) for e in rows.values_list("event_id", flat=True).distinct())
        if not event_ids:
            self.message_user(request, "None of the selected deliveries is failed or held.", messages.WARNING)
            return
        result = deliveries_redrive(
            selection=RedriveSelection(event_ids=event_ids),
            actor=request.user.get_username(),
            via="admin",
            reason=f"admin: {rows.count()} selected",
        )
        note = f", {result.unavailable} left (their request is gone)" if result.unavailable else ""
        self.message_user(
            request,
            f"Re-drive #{result.redrive.pk}: {result.retried} sent again, {result.settled} marked sent{note}.",
            messages.SUCCESS,
        )


@admin.register(Redrive)
class RedriveAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "actor", "via", "retried", "settled", "reason")
    readonly_fields = ("created_at", "actor", "via", "filters", "retried", "settled", "reason")

    def has_add_permission(self, request):
        return False


@admin.register(ProviderPause)
class ProviderPauseAdmin(admin.ModelAdmin):
    list_display = ("provider", "paused_until", "reason")
