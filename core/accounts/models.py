from typing import ClassVar

from django.contrib.auth.models import AbstractUser, UserManager
from django.contrib.postgres.fields import ArrayField
from django.db import models


class EmailUserManager(UserManager):
    def get_by_natural_key(self, email):
        return self.get(email=email.lower())

    def create_user(self, username=None, email=None, password=None, **extra_fields):
        return super().create_user(username, (email or "").lower(), password, **extra_fields)

    def create_superuser(self, username=None, email=None, password=None, **extra_fields):
        return super().create_superuser(username, (email or "").lower(), password, **extra_fields)


class User(AbstractUser):
    """A client of the platform. Logs in with its email, which is stored lower-cased and unique."""

    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS = ["username"]

    objects: ClassVar[EmailUserManager] = EmailUserManager()

    def clean(self):
        super().clean()
        self.email = self.email.lower()


class ApiKeyScope(models.TextChoices):
    """What a key may do. A user token keeps all of its user's rights; a key only these."""

    SEND = "send", "send emails (POST sent-email, cancel)"
    READ = "read", "read the sent-email log"
    TEMPLATES = "templates", "list, read and (with the user's rights) write templates"


class ApiKey(models.Model):
    """A long-lived credential for a service client, acting for its user within its scopes.

    The key (`ek_<prefix>_<secret>`) is shown once when it is made; the table keeps its prefix, to
    find the row, and a SHA-256 digest of the whole key, to check it. The secret has 256 random
    bits, so a fast digest is as safe as a slow one and costs every request nothing. A revoked key
    stays for the record (its name, its last use) and is refused."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    scopes = ArrayField(models.CharField(max_length=16, choices=ApiKeyScope.choices))
    rate_limit_per_minute = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Kept to the minute at most: written when the key is used and the stored time is older.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["user", "-created_at"], name="accounts_apikey_user_created")]

    def __str__(self):
        return f"{self.name} (ek_{self.prefix}_…)"


class ApiKeyWindow(models.Model):
    """A key's request count in the current minute: the throttle's counter, one row per key,
    bumped by one atomic statement (core/accounts/throttling.py). The table is UNLOGGED (see its
    migration): a counter that a crash resets costs one minute's limit, never a send."""

    key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, primary_key=True, related_name="+")
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField()

    class Meta:
        verbose_name = "API key rate window"

    def __str__(self):
        return f"{self.key_id}: {self.count} since {self.window_start:%H:%M}"
