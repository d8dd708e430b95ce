"""The outbox relay and its ops CLI. Not built yet: see the open issues."""
