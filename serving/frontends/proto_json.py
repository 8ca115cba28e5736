"""Protobuf messages as the JSON Triton's REST API writes: field names as in the .proto, enums by
name, 64-bit integers as numbers (protobuf's own JSON writes them as strings, which perf_analyzer
does not read), and, as Triton prints them, every scalar and list even at its default value; a
sub-message only when it is set."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor


def message_json(message) -> dict:
    document = {}
    for field in message.DESCRIPTOR.fields:
        singular_message = field.message_type is not None and not _repeated(field)
        if singular_message and not message.HasField(field.name):
            continue
        document[field.name] = _field_json(field, getattr(message, field.name))
    return document


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _field_json(field: FieldDescriptor, value):
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _value_json(value_field, item) for key, item in value.items()}
    if _repeated(field):
        return [_value_json(field, item) for item in value]
    return _value_json(field, value)


def _value_json(field: FieldDescriptor, value):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name if value in field.enum_type.values_by_number else value
    return value
