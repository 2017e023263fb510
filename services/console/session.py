"""The console's sessions: who is signed in, carried in one cookie the browser cannot read.

A session is the caller's API key, its expiry and a CSRF token, sealed with AES-GCM under a
key derived (HKDF-SHA256) from the console's secret, and base64url-encoded into the cookie
`genai_console` (HttpOnly, SameSite=Strict, Path=/console, Secure over TLS). Nothing is kept
on the server: every replica that shares the secret (the platform's internal token, which
replicas already share) opens every replica's sessions, and a restarted replica keeps them.

The key itself stays the credential: every page calls the services with it, so a revoked,
expired or demoted key ends or narrows the session at once. Signing out clears the cookie; a
copied cookie is good until its expiry, as a bearer token is (and only from a page of the same
site, since SameSite=Strict keeps it off cross-site requests).

Every action (a POST) also carries the session's CSRF token in a form field or the
`X-CSRF-Token` header, compared in constant time: SameSite=Strict already keeps the cookie off
cross-site posts, and the token keeps a same-site page (another app on a sibling subdomain)
from forging one.
"""

import base64
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE: Final = "genai_console"
COOKIE_PATH: Final = "/console"
CSRF_FIELD: Final = "csrf_token"
"""The form field that carries the CSRF token."""
CSRF_HEADER: Final = "x-csrf-token"
"""The header that carries it for script-made requests (the playground's stream)."""
_NONCE_BYTES: Final = 12
_VERSION: Final = b"\x01"
_INFO: Final = b"genai-console-session-v1"


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the API key it calls the platform with (empty under auth `none`),
    when the session ends (Unix seconds) and its CSRF token."""

    api_key: str
    expires_at: float
    csrf_token: str

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def csrf_matches(self, token: str | None) -> bool:
        """Whether `token` (from a form or header) is this session's CSRF token."""
        return token is not None and hmac.compare_digest(
            token.encode("utf-8"), self.csrf_token.encode("utf-8")
        )


class SessionCodec:
    """Seals sessions into cookie values and opens them again (see the module docstring)."""

    def __init__(self, secret: bytes, *, lifetime_seconds: float) -> None:
        if len(secret) < 16:
            raise ValueError("the console's session secret must be at least 16 bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
        self._aead = AESGCM(key)
        self.lifetime_seconds = lifetime_seconds

    def new(self, api_key: str, *, now: float | None = None) -> Session:
        """A fresh session for `api_key`, ending `lifetime_seconds` from now."""
        start = time.time() if now is None else now
        return Session(
            api_key=api_key,
            expires_at=start + self.lifetime_seconds,
            csrf_token=secrets.token_urlsafe(24),
        )

    def seal(self, session: Session) -> str:
        """The cookie value of `session`."""
        payload = json.dumps(
            {"k": session.api_key, "e": session.expires_at, "c": session.csrf_token},
            separators=(",", ":"),
        ).encode("utf-8")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = _VERSION + nonce + self._aead.encrypt(nonce, payload, _VERSION)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, value: str | None, *, now: float | None = None) -> Session | None:
        """The session in cookie `value`, or None when there is none, it was not sealed with
        this secret, was tampered with, or has expired."""
        if not value or len(value) > 4096:
            return None
        try:
            sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except ValueError:
            return None
        if len(sealed) <= 1 + _NONCE_BYTES or sealed[:1] != _VERSION:
            return None
        nonce = sealed[1 : 1 + _NONCE_BYTES]
        try:
            payload = json.loads(self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES :], _VERSION))
            session = Session(
                api_key=str(payload["k"]),
                expires_at=float(payload["e"]),
                csrf_token=str(payload["c"]),
            )
        except (InvalidTag, ValueError, KeyError, TypeError):
            return None
        return None if session.expired(now) else session
