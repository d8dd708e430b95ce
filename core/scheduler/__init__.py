"""The scheduler process's own pieces (no models): its liveness check, `manage.py scheduler_alive`."""
