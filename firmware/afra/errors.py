"""The appliance's errors: one base class; each subclass also inherits the matching builtin."""

from __future__ import annotations


class AfraError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(AfraError, ValueError):
    """The configuration is invalid; the message names the key and the problem."""


class StorageError(AfraError, OSError):
    """The storage root cannot take a write (not writable, I/O error)."""


class InvalidInstanceError(AfraError, ValueError):
    """A received object cannot be stored as it is (bad header, bad UID, truncated)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class PeerReplyError(AfraError, ValueError):
    """A remote DICOM peer answered with something the box will not trust."""


class AssociationFailedError(AfraError, ConnectionError):
    """A DICOM association to a peer could not be established."""


class ServiceError(AfraError, OSError):
    """A network service of the box cannot start (address in use, not available)."""
