"""The API of users' status webhook endpoints (the models and services are core.client_webhooks')."""
