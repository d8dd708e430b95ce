from typing import ClassVar

from django.contrib.auth.models import AbstractUser, UserManager
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
