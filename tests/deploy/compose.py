"""docker/compose.yaml as Compose renders it for a given environment, without Docker.

Compose's interpolation, as its specification documents it: `$$` is a literal `$`; `$VAR` and
`${VAR}` take the variable (empty when unset); `${VAR:-default}` the default when it is unset or
empty, `${VAR-default}` only when unset; `${VAR:?message}` and `${VAR?message}` refuse to render
when it is unset or empty (unset only); `${VAR:+replacement}` the replacement when it is set and
not empty, `${VAR+replacement}` when set. Defaults and replacements may hold further
substitutions. YAML's merge keys (`<<`) are resolved by the YAML loader, before interpolation,
as Compose does."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MissingVariable(Exception):
    pass


def _braced(text: str, start: int) -> int:
    """The index just past the `}` that closes the `${` at `start`."""
    depth, index = 0, start
    while index < len(text):
        if text.startswith("${", index):
            depth, index = depth + 1, index + 2
            continue
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    raise ValueError(f"unclosed substitution in {text!r}")


def interpolate(text: str, env: dict[str, str]) -> str:
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "$":
            out.append(char)
            index += 1
        elif text.startswith("$$", index):
            out.append("$")
            index += 2
        elif text.startswith("${", index):
            end = _braced(text, index)
            out.append(_substitute(text[index + 2 : end - 1], env))
            index = end
        elif match := _NAME.match(text, index + 1):
            out.append(env.get(match.group(), ""))
            index = match.end()
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _substitute(expression: str, env: dict[str, str]) -> str:
    match = _NAME.match(expression)
    if not match:
        raise ValueError(f"bad substitution ${{{expression}}}")
    name, rest = match.group(), expression[match.end() :]
    value = env.get(name)
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(operator):
            argument = rest[len(operator) :]
            break
    else:
        if rest:
            raise ValueError(f"bad substitution ${{{expression}}}")
        return value or ""
    present = bool(value) if operator.startswith(":") else value is not None
    if operator.endswith("-"):
        return value if present else interpolate(argument, env)  # type: ignore[return-value]
    if operator.endswith("?"):
        if not present:
            raise MissingVariable(f"{name}: {interpolate(argument, env)}")
        return value  # type: ignore[return-value]
    return interpolate(argument, env) if present else ""


def _walk(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    return node


def render(env: dict[str, str]) -> dict:
    """The compose file with every substitution made from `env` (the shell's variables)."""
    return _walk(yaml.safe_load(COMPOSE_FILE.read_text()), env)


# What the compose file asks its user to export (README, "Images and deployment").
REQUIRED = {"DJANGO_SECRET_KEY": "s" * 64, "POSTGRES_PASSWORD": "p" * 32, "RABBITMQ_PASSWORD": "r" * 32}
