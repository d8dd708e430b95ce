"""drf-spectacular hook: every operation documents the refusals it can give, in the one error
shape of core.errors ({"message", "errors"})."""

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "message": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
    "required": ["message", "errors"],
}
REFUSALS = {
    "400": "Invalid input: `errors` names each field.",
    "401": "No valid token.",
    "403": "Not allowed for this user.",
    "404": "No such object (or not yours).",
    "405": "Method not allowed.",
    "406": "Not acceptable.",
    "413": "The request body is too large.",
    "415": "Unsupported media type.",
    "422": "The Idempotency-Key was used for a different request.",
    "429": "Too many requests: see Retry-After.",
    "503": "A dependency (or the webhook key) is not available.",
}


def add_error_responses(result, generator, request, public):
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in REFUSALS.items():
                operation["responses"].setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    return result
