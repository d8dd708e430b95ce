from django.contrib import admin

from core.deliveries.models import Delivery, ProviderPause


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("recipient", "email_id", "state", "attempts", "provider_message_id", "updated_at")
    list_filter = ("state",)
    search_fields = ("=email_id", "=event_id", "recipient", "=provider_message_id")
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(ProviderPause)
class ProviderPauseAdmin(admin.ModelAdmin):
    list_display = ("provider", "paused_until", "reason")
