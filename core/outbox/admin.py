from django.contrib import admin

from core.outbox.models import OutboxEvent


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "aggregatetype", "aggregateid", "created_at", "published_at", "attempts")
    list_filter = ("type", "aggregatetype", ("published_at", admin.EmptyFieldListFilter))
    search_fields = ("=id", "=aggregateid")
    readonly_fields = [f.name for f in OutboxEvent._meta.fields]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False
