from django.contrib import admin
from django.db.models import Exists, OuterRef

from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient
from core.deliveries.models import Delivery


@admin.register(EmailTemplate)
class EmailTemplateAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "subject", "modified")
    search_fields = ("name", "subject")


class SentEmailRecipientInline(admin.TabularInline):
    model = SentEmailRecipient
    extra = 0
    can_delete = False
    readonly_fields = ("address",)


class ScheduledFilter(admin.SimpleListFilter):
    title = "scheduled"
    parameter_name = "scheduled"

    def lookups(self, request, model_admin):
        return [("yes", "scheduled (send_at set)"), ("no", "sent at once")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(send_at__isnull=self.value() == "no")
        return queryset


@admin.register(SentEmail)
class SentEmailAdmin(admin.ModelAdmin):
    list_display = ("id", "sender", "template_name", "subject", "created", "send_at", "cancelled")
    list_filter = (ScheduledFilter, "template_name")
    search_fields = ("=id", "sender__email", "subject", "=correlation_id")
    date_hierarchy = "created"
    list_select_related = ("sender",)
    inlines = [SentEmailRecipientInline]
    readonly_fields = [*(f.name for f in SentEmail._meta.fields), "cancelled"]

    def get_queryset(self, request):
        # Cancelling is recorded by the deliveries (state `cancelled`), one EXISTS per row shown.
        cancelled = Delivery.objects.filter(email_id=OuterRef("pk"), state=Delivery.State.CANCELLED)
        return super().get_queryset(request).annotate(is_cancelled=Exists(cancelled))

    @admin.display(boolean=True, description="cancelled", ordering="is_cancelled")
    def cancelled(self, email) -> bool:
        return email.is_cancelled

    def has_add_permission(self, request):
        return False  # emails are sent through the API, which writes their outbox event
