"""The composition root: the settings that install every app, for the migrations and the
django-q2 scheduler. Not a service: it serves nothing and no service imports it."""
