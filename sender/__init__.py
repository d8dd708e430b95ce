"""The sender: turns email.requested events into SendGrid calls and status events."""
