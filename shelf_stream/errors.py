"""One exception root for the whole package (see docs/design.md, "Errors")."""

from __future__ import annotations


class ShelfStreamError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolError(ShelfStreamError):
    """The wire protocol was broken, by us or by the peer."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid.

    ``code`` is the protocol's error code (see ``protocol.ErrorCode``); the connection
    answers with an Error message carrying it and closes with ``close_code``.
    """

    def __init__(self, message: str, *, code: int = 1, close_code: int = 1002) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code


class CodecError(ShelfStreamError):
    """An encoder or decoder failed; the stream survives to the next keyframe."""


class EngineError(ShelfStreamError):
    """A model could not be loaded or run; the message says how to fix it."""


class ConfigError(ShelfStreamError):
    """Bad user options, reported before anything starts."""
