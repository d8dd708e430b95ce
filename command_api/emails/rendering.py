"""Email templates in Django template syntax, outside Django's file-based template set-up.

The body is HTML, so its variables are autoescaped; the subject is a plain header, so it is not
escaped (an `&` stays an `&`) but may never contain a line break. Neither can load files or tag
libraries: a template is data from the API, not code.
"""

from functools import lru_cache

from django.conf import settings
from django.template import Engine, TemplateSyntaxError
from django.template.defaulttags import DebugNode, LoremNode
from django.template.loader_tags import ExtendsNode, IncludeNode

from command_api.emails.template_limits import Budget, BudgetedContext, RenderLimitExceeded
from core.text import text_problem

# Django's tags and filters, with loops and the filters that pad bounded (template_limits).
_LIMITS = ["command_api.emails.template_limits"]
_body_engine = Engine(autoescape=True, loaders=[], libraries={}, builtins=_LIMITS, debug=False)
_subject_engine = Engine(autoescape=False, loaders=[], libraries={}, builtins=_LIMITS, debug=False)


class RenderError(Exception):
    pass


class RenderTooLarge(RenderError):
    """Rendering went over RENDER_MAX_BYTES, RENDER_MAX_LOOP_ITERATIONS or RENDER_TIMEOUT_MS;
    the message names the limit."""


class RenderUnstorable(RenderError):
    """The rendered text holds a character no email may (a control character a filter made)."""


# Tags that reach outside the template (files, or with DEBUG the server's context and modules),
# or write text of any length the template asks for.
_FORBIDDEN = {DebugNode: "debug", IncludeNode: "include", ExtendsNode: "extends", LoremNode: "lorem"}


@lru_cache(maxsize=512)
def _compile(source: str, *, html: bool):
    engine = _body_engine if html else _subject_engine
    template = engine.from_string(source)
    for node_type, name in _FORBIDDEN.items():
        if template.nodelist.get_nodes_by_type(node_type):
            raise TemplateSyntaxError(f"The {name} tag is not allowed in email templates.")
    return template


def check_compiles(source: str, *, html: bool) -> str | None:
    """The compile error of `source` as text, or None when it compiles."""
    try:
        _compile(source, html=html)
    except TemplateSyntaxError as exc:
        return str(exc)
    return None


def new_budget() -> Budget:
    """What one email's rendering (its subject and body together) may cost."""
    return Budget(
        max_bytes=settings.RENDER_MAX_BYTES,
        max_iterations=settings.RENDER_MAX_LOOP_ITERATIONS,
        timeout=settings.RENDER_TIMEOUT_MS / 1000,
    )


def render(source: str, context: dict, *, html: bool, budget: Budget | None = None) -> str:
    """Render `source` with `context` within `budget` (a new one when None). Raises RenderTooLarge
    over a limit, RenderError for a template that cannot render."""
    budget = budget or new_budget()
    rendering = BudgetedContext(context, autoescape=html)
    rendering.budget = budget  # read by the bounded loop and filters of template_limits
    try:
        output = _compile(source, html=html).render(rendering)
    except RenderLimitExceeded as exc:
        raise RenderTooLarge(str(exc)) from None
    except Exception as exc:  # syntax errors, missing includes, errors inside filters
        raise RenderError(str(exc)) from exc
    # Loops charged characters as they went; the whole is measured in bytes, as it is sent.
    if len(output) * 4 > budget.max_bytes and len(output.encode("utf-8", "surrogatepass")) > budget.max_bytes:
        raise RenderTooLarge(f"The rendered email would exceed RENDER_MAX_BYTES ({budget.max_bytes} bytes).")
    # The template and the context hold no such character, but a filter can make one
    # (`stringformat:'c'` of a number): the email could not be stored or sent.
    if problem := text_problem(output):
        raise RenderUnstorable(f"The rendered text could not be stored or sent. {problem}")
    return output
