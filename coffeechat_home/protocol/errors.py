"""Exception classes shared by the pure protocol modules.

Every error raised by ``coffeechat_home.protocol`` on bad input derives from
``ProtocolError`` (and ``ValueError``), so callers at the edge (HTTP routes,
federation intake) can map them to Matrix error codes in one place.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base class: input that violates a Matrix protocol rule."""


class CanonicalJSONError(ProtocolError):
    """A value cannot be encoded as Matrix canonical JSON (float, big int, ...)."""


class JSONParseError(ProtocolError):
    """Bytes that are not valid JSON (or use NaN / Infinity)."""


class InvalidIdentifier(ProtocolError):
    """A malformed user ID, room ID, room alias, event ID or server name."""


class SignatureError(ProtocolError):
    """A signature is missing, malformed or does not verify."""


class InvalidSigningKey(ProtocolError):
    """A signing key line or verify key that cannot be decoded."""


class EventFormatError(ProtocolError):
    """A PDU or event template that is missing fields or has wrong types."""


class EventSizeError(EventFormatError):
    """A PDU over the spec's size limits (65536 bytes, 255-byte fields)."""
