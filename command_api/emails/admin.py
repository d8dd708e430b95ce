from django.contrib import admin

from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient


@admin.register(EmailTemplate)
class EmailTemplateAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "subject", "modified")
    search_fields = ("name", "subject")


class SentEmailRecipientInline(admin.TabularInline):
    model = SentEmailRecipient
    extra = 0
    can_delete = False
    readonly_fields = ("address",)


@admin.register(SentEmail)
class SentEmailAdmin(admin.ModelAdmin):
    list_display = ("id", "sender", "template_name", "subject", "created")
    list_filter = ("template_name",)
    search_fields = ("=id", "sender__email", "subject", "=correlation_id")
    date_hierarchy = "created"
    list_select_related = ("sender",)
    inlines = [SentEmailRecipientInline]
    readonly_fields = [f.name for f in SentEmail._meta.fields]

    def has_add_permission(self, request):
        return False  # emails are sent through the API, which writes their outbox event
