"""Create the local demo admin and template (bin/run runs it). Development only."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from command_api.emails.models import EmailTemplate
from core.accounts.models import User


class Command(BaseCommand):
    help = "Create the demo admin (DEMO_ADMIN_EMAIL / DEMO_ADMIN_PASSWORD) and a demo template, if missing."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("demo_setup only runs with DJANGO_DEBUG=true: it creates a known admin password.")
        admin, created = User.objects.get_or_create(
            email=settings.DEMO_ADMIN_EMAIL.lower(),
            defaults={"username": "demo-admin", "is_staff": True, "is_superuser": True},
        )
        if created:
            admin.set_password(settings.DEMO_ADMIN_PASSWORD)
            admin.save()
        template, _ = EmailTemplate.objects.get_or_create(
            name="demo-welcome",
            defaults={"subject": "Welcome, {{ name }}", "body": "<p>Hello {{ name }}, welcome aboard!</p>"},
        )
        if created:
            self.stdout.write(f"demo admin     {admin.email} / {settings.DEMO_ADMIN_PASSWORD} (created)")
        else:
            self.stdout.write(f"demo admin     {admin.email} (exists; its password was left as it is)")
        self.stdout.write(f"demo template  #{template.pk} {template.name}")
