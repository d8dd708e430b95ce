from django.contrib import admin, messages

from core.outbox.models import OutboxEvent, OutboxReplay
from core.outbox.selectors import OutboxFilter
from core.outbox.services import outbox_replay


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "aggregatetype", "aggregateid", "created_at", "published_at", "failed_at", "attempts")
    list_filter = (
        "type",
        "aggregatetype",
        ("published_at", admin.EmptyFieldListFilter),
        ("failed_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("=id", "=aggregateid")
    readonly_fields = [f.name for f in OutboxEvent._meta.fields]
    date_hierarchy = "created_at"
    actions = ["replay_selected"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # rows go by the retention purge, never by hand

    @admin.action(description="Replay the selected events (publish again, same event ids)")
    def replay_selected(self, request, queryset):
        ids = tuple(str(pk) for pk in queryset.values_list("id", flat=True))
        result = outbox_replay(
            selection=OutboxFilter(event_ids=ids), actor=request.user.get_username(), via="admin"
        )
        skipped = len(ids) - result.count
        note = f" ({skipped} still pending, left alone)" if skipped else ""
        self.message_user(request, f"Replayed {result.count} events{note}.", messages.SUCCESS)


@admin.register(OutboxReplay)
class OutboxReplayAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "actor", "via", "event_count", "reason")
    readonly_fields = ("created_at", "actor", "via", "filters", "event_count", "reason")

    def has_add_permission(self, request):
        return False
