"""structlog set-up, done once per process: JSON in Kubernetes, readable console locally.

Standard-library loggers (Django, gunicorn, pika) go through the same processors, so every line a
process writes has one format and carries the bound correlation id.
"""

import structlog
from structlog.typing import Processor

_shared_processors: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def logging_config(*, json: bool, level: str) -> dict:
    """A dictConfig for Django's LOGGING setting that renders through structlog."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
                "foreign_pre_chain": _shared_processors,
            }
        },
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "structlog"},
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            # Our own request log replaces Django's; 4xx are answers, not server problems.
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
            "pika": {"level": "WARNING"},
        },
    }


def configure_structlog() -> None:
    structlog.configure(
        processors=[
            # First: a call below the logger's level is dropped before the others run (the time
            # stamp, the context merge), not after all of them by the standard library.
            structlog.stdlib.filter_by_level,
            *_shared_processors,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
