"""Email templates in Django template syntax, outside Django's file-based template set-up.

The body is HTML, so its variables are autoescaped; the subject is a plain header, so it is not
escaped (an `&` stays an `&`) but may never contain a line break. Neither can load files or tag
libraries: a template is data from the API, not code.
"""

from functools import lru_cache

from django.template import Context, Engine, TemplateSyntaxError
from django.template.defaulttags import DebugNode
from django.template.loader_tags import ExtendsNode, IncludeNode

_body_engine = Engine(autoescape=True, loaders=[], libraries={}, debug=False)
_subject_engine = Engine(autoescape=False, loaders=[], libraries={}, debug=False)


class RenderError(Exception):
    pass


# Tags that reach outside the template: files, or (with DEBUG) the server's context and modules.
_FORBIDDEN = {DebugNode: "debug", IncludeNode: "include", ExtendsNode: "extends"}


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


def render(source: str, context: dict, *, html: bool) -> str:
    """Render `source` with `context`; raises RenderError for a template that cannot render."""
    try:
        return _compile(source, html=html).render(Context(context, autoescape=html))
    except Exception as exc:  # syntax errors, missing includes, errors inside filters
        raise RenderError(str(exc)) from exc
