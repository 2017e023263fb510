"""Version diffs: variables by name, messages by position, every kind of change."""

from services.prompt.core.registry import Change, diff_content

OLD = {
    "messages": [{"role": "CHAT_ROLE_USER", "content": "Weather in {{ city }}?"}],
    "variables": [
        {"name": "city", "type": "VARIABLE_TYPE_STRING", "required": True},
        {"name": "unit", "type": "VARIABLE_TYPE_ENUM", "enum_values": ["c", "f"]},
    ],
    "parameters": {"temperature": 0.2},
}
NEW = {
    "messages": [
        {"role": "CHAT_ROLE_SYSTEM", "content": "Be brief."},
        {"role": "CHAT_ROLE_USER", "content": "Weather in {{ city }}?"},
    ],
    "variables": [
        {"name": "unit", "type": "VARIABLE_TYPE_ENUM", "enum_values": ["c", "f", "k"]},
        {"name": "city", "type": "VARIABLE_TYPE_ENUM", "enum_values": ["Paris"]},
    ],
    "parameters": {"temperature": 0.2, "max_tokens": 50},
}


def test_variables_are_compared_by_name_and_messages_by_position() -> None:
    changes = diff_content(OLD, NEW)
    assert changes == [
        Change("messages[0].content", "modified", "Weather in {{ city }}?", "Be brief."),
        Change("messages[0].role", "modified", "CHAT_ROLE_USER", "CHAT_ROLE_SYSTEM"),
        Change("messages[1].content", "added", None, "Weather in {{ city }}?"),
        Change("messages[1].role", "added", None, "CHAT_ROLE_USER"),
        Change("parameters.max_tokens", "added", None, 50),
        Change("variables.city.enum_values", "added", None, ["Paris"]),
        Change("variables.city.required", "removed", True, None),
        Change("variables.city.type", "modified", "VARIABLE_TYPE_STRING", "VARIABLE_TYPE_ENUM"),
        Change("variables.unit.enum_values", "modified", ["c", "f"], ["c", "f", "k"]),
    ]


def test_equal_content_has_no_changes() -> None:
    assert diff_content(OLD, OLD) == []
