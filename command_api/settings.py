"""Settings of the command API process (the write side)."""

import json

from core.settings import *  # noqa: F401,F403

ROOT_URLCONF = "command_api.urls"
WSGI_APPLICATION = "command_api.wsgi.application"

# Shown in pg_stat_activity next to the sender's, the relay's and the projector's connections.
DATABASES["default"]["OPTIONS"]["application_name"] = "command-api"  # noqa: F405

# The docs page (api/docs/) is the one at the gateway's base URL, so it offers both APIs' schemas
# with a selector: this one and the query API's, which the gateway routes to the query API (on
# the command API's own port only the first answers). Swagger UI lists several schemas only in
# its standalone layout, whose preset is a JavaScript object: drf-spectacular passes a string
# setting to the page unchanged, as JavaScript.
schemas = json.dumps([
    {"name": "Command API: users, templates, sending, ops, webhooks", "url": "/api/schema/"},
    {"name": "Query API: the sent-email log", "url": "/api/schema/sent-email-log/"},
])
SPECTACULAR_SETTINGS = {
    **SPECTACULAR_SETTINGS,  # noqa: F405
    "SWAGGER_UI_SETTINGS": f'{{"deepLinking": true, "urls": {schemas}, "layout": "StandaloneLayout", '
                           '"presets": [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset]}',
}
