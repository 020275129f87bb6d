"""What the bytes of every request must be, checked before any handler sees them.

Each served method's request_deserializer is wrapped once, at registration (guard.Registrar):

  * bytes that do not parse as the request message (a string field that is not UTF-8, as the
    gateway sends for "/v1/wallets/%FF", or a truncated message) and
  * a string field holding a control character (C0, DEL or C1: "\\x00" is refused by
    PostgreSQL, and no field of the API means one)

do not fail inside grpc (UNKNOWN with internal names); the deserializer returns a `Malformed`
holding an InvalidArgument that names the field, and the guard raises it inside the call, so it
is answered, logged and counted like any other domain error.

The string check is compiled per message type: only fields that can hold a string are read
(measured in docs/benchmarks.md: about 0.5 µs for GetWalletRequest, 3.5 µs for the larger
CreateTransactionRequest, on top of parsing).
"""
from __future__ import annotations

import ast
import re
from typing import Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.domain.errors import InvalidArgument

MALFORMED = "MALFORMED_REQUEST"
CONTROL_CHARACTER = "CONTROL_CHARACTER"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_STRING, _MESSAGE = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE


class Malformed:
    """What a wrapped deserializer returns for a request it refuses."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument):
        self.error = error


def guarded(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """`deserializer` (a generated Message.FromString) that returns a Malformed, instead of
    raising, for bytes it cannot parse, and for a message with a control character in a string."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    if not isinstance(descriptor, Descriptor):          # not a generated message type: parse errors only
        def parse_only(raw: bytes):
            try:
                return deserializer(raw)
            except Exception:  # whatever the parser raises, the bytes are at fault
                return Malformed(InvalidArgument("the request could not be read", reason=MALFORMED))
        return parse_only
    check = _checker(descriptor)

    def deserialize(raw: bytes):
        try:
            message = deserializer(raw)
        except Exception:  # whatever the parser raises, the bytes are at fault
            return Malformed(_undecodable(descriptor, raw))
        if check is not None and (path := check(message)) is not None:
            return Malformed(_control_character(path, message))
        return message
    return deserialize


def _undecodable(descriptor: Descriptor, raw: bytes) -> InvalidArgument:
    field = _non_utf8_field(descriptor, raw)
    if field is not None:
        return InvalidArgument.field(field, "is not valid UTF-8 text (a percent-encoded byte such as %FF "
                                            "that does not form a character?)", reason=MALFORMED)
    return InvalidArgument(f"the request is not a valid {descriptor.full_name} message", reason=MALFORMED)


def _control_character(path: str, message) -> InvalidArgument:
    value = _value_at(message, path)
    found = _CONTROL.search(value) if isinstance(value, str) else None
    character = f"U+{ord(found.group()):04X}" if found else "a control character"
    return InvalidArgument.field(path, f"contains the control character {character}; no field accepts control "
                                       "characters", reason=CONTROL_CHARACTER)


# --- control characters: a checker per message type --------------------------------------------

Check = Callable[[object], "str | None"]
_CHECKERS: dict[str, Check | None] = {}


def _checker(descriptor: Descriptor) -> Check | None:
    """A function giving the path of the first string field with a control character (None if
    there is none); None for a type that cannot hold a string at all."""
    name = descriptor.full_name
    if name in _CHECKERS:
        return _CHECKERS[name]
    _CHECKERS[name] = lambda message: (_CHECKERS[name] or _no_strings)(message)   # a type that contains itself
    strings, repeated_strings, messages, repeated_messages, maps = [], [], [], [], []
    for field in descriptor.fields:
        if field.type == _STRING:
            (repeated_strings if field.is_repeated else strings).append(field.name)
        elif field.type == _MESSAGE and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            inner = _checker(value.message_type) if value.type == _MESSAGE else None
            if key.type == _STRING or value.type == _STRING or inner is not None:
                maps.append((field.name, key.type == _STRING, value.type == _STRING, inner))
        elif field.type == _MESSAGE and (inner := _checker(field.message_type)) is not None:
            (repeated_messages if field.is_repeated else messages).append((field.name, inner))
    if not (strings or repeated_strings or messages or repeated_messages or maps):
        _CHECKERS[name] = None
        return None
    search = _CONTROL.search

    def check(message) -> str | None:
        for field in strings:
            value = getattr(message, field)
            if value and search(value):
                return field
        for field in repeated_strings:
            for i, value in enumerate(getattr(message, field)):
                if search(value):
                    return f"{field}[{i}]"
        for field, inner in messages:
            if message.HasField(field) and (path := inner(getattr(message, field))) is not None:
                return f"{field}.{path}"
        for field, inner in repeated_messages:
            for i, value in enumerate(getattr(message, field)):
                if (path := inner(value)) is not None:
                    return f"{field}[{i}].{path}"
        for field, string_keys, string_values, inner in maps:
            for key, value in getattr(message, field).items():
                if string_keys and search(key):
                    return field
                if string_values and search(value):
                    return f"{field}[{key!r}]"
                if inner is not None and (path := inner(value)) is not None:
                    return f"{field}[{key!r}].{path}"
        return None
    _CHECKERS[name] = check
    return check


def _no_strings(message) -> None:
    return None


# --- invalid UTF-8: which field --------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _non_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """The path of the first string field of `data` (wire format) that is not UTF-8, if any (an
    element of a repeated field by its index, as the control-character check names it)."""
    pos, counts = 0, {}
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos:pos + length], pos + length
                field = descriptor.fields_by_number.get(number)
                if field is None:
                    continue
                entry = field.type == _MESSAGE and field.message_type.GetOptions().map_entry
                path = prefix + field.name
                if field.is_repeated and not entry:
                    counts[number] = counts.get(number, -1) + 1
                    path += f"[{counts[number]}]"
                if field.type == _STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return path
                elif field.type == _MESSAGE:
                    found = _non_utf8_field(field.message_type, chunk, "" if entry else path + ".")
                    if found is not None:
                        return f"{path}.{found}" if entry else found
            else:
                return None
    except IndexError:
        return None
    return None


def _value_at(message, path: str):
    """The value a path as `check` names it names: dotted fields, `[i]` an element of a repeated
    field, `['k']` a map's value (None when the path does not lead to one)."""
    value = message
    for part in path.split("."):
        name, _, index = part.partition("[")
        value = getattr(value, name, None)
        if index:
            try:
                value = value[ast.literal_eval(index.removesuffix("]"))]
            except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
                return None
    return value
