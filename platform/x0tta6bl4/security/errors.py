"""Typed errors of the security layer: bad identities, bad certificates, refused peers."""

from __future__ import annotations

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error


class SecurityError(X0tta6bl4Error):
    """Base class of every refusal the security layer makes on purpose."""


class InvalidSpiffeIdError(SecurityError, ConfigError):
    """A SPIFFE ID or trust domain that breaks the SPIFFE-ID spec or the platform's naming."""


class InvalidSvidError(SecurityError):
    """A certificate or key that is not a conforming X509-SVID (or does not match its key)."""


class PeerRejectedError(SecurityError):
    """A peer whose certificate chain, validity or revocation state fails verification.

    ``reason`` is a short stable word for metrics and logs (``no-certificate``, ``untrusted``,
    ``expired``, ``revoked``, ``wrong-trust-domain``, ``bad-svid``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuthorizationError(SecurityError):
    """An authenticated identity that the policy does not allow to do what it asked."""


class CaError(SecurityError):
    """The embedded CA's state on disk is missing, unreadable or inconsistent."""


class RayAuthError(SecurityError):
    """A Ray cluster refused the platform's credential, or the platform will not join it without one."""


class RayTokenError(RayAuthError, ConfigError):
    """The token or its file is unusable: missing, empty, readable by others, or a bad switch value."""
