#!/usr/bin/env python
"""Django's command-line utility (defaults to the command API's settings, debug on)."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "command_api.settings")
    # manage.py is the developer's entry point, so it works out of the box. Production sets
    # DJANGO_DEBUG=false explicitly; the WSGI entry point (gunicorn) defaults to it.
    os.environ.setdefault("DJANGO_DEBUG", "true")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
