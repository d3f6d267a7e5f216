"""Chat messages: the one check every reader of conversations uses."""
from __future__ import annotations

ROLES = ("system", "user", "assistant", "tool")


def as_messages(value, field: str = "messages", string_role: str | None = None,
                roles: tuple[str, ...] = ROLES) -> list[dict[str, str]]:
    """`value` as a list of `{"role", "content"}` messages (extra keys dropped).

    Args:
        value: a list of `{"role", "content"}` objects, or a string when `string_role` is given
            (it becomes one message of that role).
        field: the field's name, for the error message.
        roles: the roles allowed.

    Raises:
        ValueError: not a non-empty list (or string), or a message without an allowed role and
            string content; the message names the field and the index.

    >>> as_messages("Hi", "prompt", string_role="user")
    [{'role': 'user', 'content': 'Hi'}]
    """
    if isinstance(value, str) and string_role is not None:
        if not value.strip():
            raise ValueError(f"field {field!r} is an empty string")
        return [{"role": string_role, "content": value}]
    if not isinstance(value, list) or not value:
        got = "missing" if value is None else "empty" if isinstance(value, list) else f"a {type(value).__name__}"
        alt = " or a string" if string_role is not None else ""
        raise ValueError(f"field {field!r} must be a non-empty list of {{role, content}} messages{alt} ({got})")
    for i, message in enumerate(value):
        ok = isinstance(message, dict) and message.get("role") in roles and isinstance(message.get("content"), str)
        if not ok:
            raise ValueError(f"field {field!r}: message {i} must be an object with a role ({'|'.join(roles)}) "
                             "and string content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def message_text(value) -> str:
    """The text of a string or of a message list (contents joined by newlines).

    Raises:
        ValueError: as `as_messages`.
    """
    return value if isinstance(value, str) else "\n".join(m["content"] for m in as_messages(value))
