"""The write side: accounts, templates, sent emails and their outbox events."""
