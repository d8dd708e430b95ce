#!/usr/bin/env python
"""Django's command-line utility: by default on the settings that install every app (migrations, the
scheduler, the demo set-up), debug on. A service's own commands name its settings module."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deployment.settings")
    # manage.py is the developer's entry point, so it works out of the box. Production sets
    # DJANGO_DEBUG=false explicitly; the WSGI entry point (gunicorn) defaults to it.
    os.environ.setdefault("DJANGO_DEBUG", "true")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
