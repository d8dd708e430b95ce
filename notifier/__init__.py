"""The notifier: delivers the client webhooks' messages (core.client_webhooks) to users' endpoints."""
