"""Bounds on what rendering an email template may cost, as a tag library the email engines load
after Django's own: a staff template is trusted, the caller's context is not, and loops over a
list the caller sends multiply. Loaded as a builtin, it replaces:

- `for`: every iteration counts against the render's budget of iterations and time, and every
  piece of output a loop body produces against its budget of bytes;
- the filters whose output can dwarf their input (`ljust`, `rjust`, `center`, `stringformat`,
  `floatformat` widths, `join`): refused before they build a string over the limits.

A render without a budget (Django's own use of these tags elsewhere) runs unbounded, as before.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.template import Context, Library, Node, NodeList, defaultfilters, defaulttags

register = Library()

# A width or precision no email needs; beyond it a filter is refused before it pads.
MAX_WIDTH = 1000


class RenderLimitExceeded(Exception):
    """The render went over one of its limits; the message names the limit."""


@dataclass
class Budget:
    max_bytes: int
    max_iterations: int
    timeout: float  # seconds
    started: float = field(default_factory=time.monotonic)
    size: int = 0
    iterations: int = 0

    def charge(self, *, size: int = 0, iterations: int = 0) -> None:
        self.size += size
        self.iterations += iterations
        if self.size > self.max_bytes:
            raise RenderLimitExceeded(f"The rendered email would exceed RENDER_MAX_BYTES ({self.max_bytes} bytes).")
        if self.iterations > self.max_iterations:
            raise RenderLimitExceeded(
                f"The template's loops would run more than RENDER_MAX_LOOP_ITERATIONS ({self.max_iterations}) times."
            )
        if time.monotonic() - self.started > self.timeout:
            raise RenderLimitExceeded(
                f"Rendering took longer than RENDER_TIMEOUT_MS ({round(self.timeout * 1000)} ms)."
            )


class BudgetedContext(Context):
    """A template context that carries what its rendering may still spend."""

    budget: Budget | None = None


def budget_of(context) -> Budget | None:
    return getattr(context, "budget", None)


# for -----------------------------------------------------------------------------------------


class _Metered:
    """A loop's sequence: each item taken costs an iteration."""

    def __init__(self, values, budget: Budget):
        self.values, self.budget = values, budget

    def __len__(self):
        return len(self.values)

    def __iter__(self):
        for item in self.values:
            self.budget.charge(iterations=1)
            yield item

    def __reversed__(self):
        for item in reversed(self.values):
            self.budget.charge(iterations=1)
            yield item


class _MeteredSequence:
    """The loop's `in …` expression, resolved to a metered sequence when the render has a budget."""

    def __init__(self, expression):
        self.expression = expression

    def __str__(self):
        return str(self.expression)

    def resolve(self, context, ignore_failures=False):
        values = self.expression.resolve(context, ignore_failures=ignore_failures)
        budget = budget_of(context)
        if values is None or budget is None:
            return values
        return _Metered(values if hasattr(values, "__len__") else list(values), budget)


class _MeteredNode(Node):
    """A node of a loop's body: what it renders costs its length."""

    child_nodelists = ("nodelist",)

    def __init__(self, inner: Node):
        self.inner = inner
        self.nodelist = NodeList([inner])
        # The stubs say every node has an origin; the parser sets it, a node made otherwise has none.
        self.token, self.origin = inner.token, getattr(inner, "origin", None)  # type: ignore[assignment]

    def render_annotated(self, context):
        budget = budget_of(context)
        if budget is None:
            return self.inner.render_annotated(context)
        charged = budget.size
        output = self.inner.render_annotated(context)
        # A loop nested inside has charged its own output, which is part of this one: charge only
        # the rest, so that the budget counts each byte of the email once.
        budget.charge(size=len(output) - (budget.size - charged))
        return output

    render = render_annotated


@register.tag("for")
def bounded_for(parser, token):
    node = defaulttags.do_for(parser, token)
    node.sequence = _MeteredSequence(node.sequence)
    node.nodelist_loop = NodeList(_MeteredNode(inner) for inner in node.nodelist_loop)
    return node


# Filters that amplify -----------------------------------------------------------------------


def _flags(original) -> dict:
    return {
        name: getattr(original, name)
        for name in ("is_safe", "needs_autoescape", "expects_localtime")
        if hasattr(original, name)
    }


def _check_width(arg) -> None:
    for number in re.findall(r"\d+", str(arg)):
        if len(number) > 6 or int(number) > MAX_WIDTH:
            raise RenderLimitExceeded(f"A width or precision over {MAX_WIDTH} is not allowed in email templates.")


def _widths_bounded(name: str):
    original = getattr(defaultfilters, name)

    def bounded(value, arg=None):
        if arg is not None:
            _check_width(arg)
        return original(value) if arg is None else original(value, arg)

    register.filter(name, bounded, **_flags(original))


for _name in ("ljust", "rjust", "center", "stringformat", "floatformat"):
    _widths_bounded(_name)


@register.filter(is_safe=True, needs_autoescape=True)
def join(value, arg, autoescape=True):
    """Django's join, refused before it builds a string over RENDER_MAX_BYTES: a list, a string
    (joined character by character) or a dict (its keys) of the caller's, joined with a separator
    of the caller's, grows with the product of their lengths."""
    if hasattr(value, "__len__"):
        size = len(value) * len(str(arg))
        if size <= settings.RENDER_MAX_BYTES:
            size += sum(len(str(item)) for item in value)
        if size > settings.RENDER_MAX_BYTES:
            raise RenderLimitExceeded(
                f"The rendered email would exceed RENDER_MAX_BYTES ({settings.RENDER_MAX_BYTES} bytes)."
            )
    return defaultfilters.join(value, arg, autoescape=autoescape)
