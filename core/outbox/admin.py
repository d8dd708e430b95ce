from django.contrib import admin, messages

from core.outbox.deadletters import dead_letters_dismiss, dead_letters_redrive
from core.outbox.models import DeadLetter, OutboxEvent, OutboxReplay
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
        result = outbox_replay(selection=OutboxFilter(event_ids=ids), actor=request.user.get_username(), via="admin")
        skipped = len(ids) - result.count
        note = f" ({skipped} still pending, left alone)" if skipped else ""
        self.message_user(request, f"Replayed {result.count} events{note}.", messages.SUCCESS)


@admin.register(OutboxReplay)
class OutboxReplayAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "actor", "via", "event_count", "reason")
    readonly_fields = ("created_at", "actor", "via", "filters", "event_count", "reason")

    def has_add_permission(self, request):
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ("id", "received_at", "queue", "reason", "deaths", "type", "email_id", "resolution", "detail")
    list_filter = ("resolution", "reason", "queue", "type")
    search_fields = ("=message_id", "=email_id")
    readonly_fields = [f.name for f in DeadLetter._meta.fields]
    date_hierarchy = "received_at"
    actions = ["redrive_selected", "dismiss_selected"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Re-drive the selected dead letters (send them again, same event ids)")
    def redrive_selected(self, request, queryset):
        result = dead_letters_redrive(
            ids=list(queryset.values_list("pk", flat=True)), actor=request.user.get_username(), via="admin"
        )
        skipped = f" Skipped: {'; '.join(result.skipped)}" if result.skipped else ""
        self.message_user(request, f"Re-drove {result.count}.{skipped}", messages.SUCCESS)

    @admin.action(description="Dismiss the selected dead letters (send nothing)")
    def dismiss_selected(self, request, queryset):
        count = dead_letters_dismiss(ids=list(queryset.values_list("pk", flat=True)), actor=request.user.get_username())
        self.message_user(request, f"Dismissed {count}.", messages.SUCCESS)
