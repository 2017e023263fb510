"""Idempotent admin writes: `CreateTenant`, `CreateApiKey` and `RotateApiKey` with a
`request_id` return their first outcome when retried, on any replica (the outcomes live in the
gateway's idempotency store, `services.gateway.core.idempotency`).

The outcome of a key creation holds the key's secret, which the platform otherwise never
keeps. It is stored sealed: AES-256-GCM under a key derived (HKDF-SHA256) from the caller's
own bearer secret, which the platform does not store either, and bound to the key of the
request. A retry by the same caller opens it; the database alone cannot, nor can another
caller that reuses the request id (its scope differs: the caller is part of it). A caller
without a bearer secret (the platform's own internal calls) gets no idempotency for them.
"""

import os
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import Message

from services.common import reasons
from services.common.auth import Principal
from services.common.errors import FailedPrecondition
from services.gateway.core.idempotency import Idempotency, Replay, fingerprint

_NONCE_BYTES: Final = 12
_VERSION: Final = b"\x01"
_SALT: Final = b"genai-platform idempotent outcome v1"

Response = TypeVar("Response", bound=Message)


class SealedOutcomes:
    """Runs one admin write at most once per `request_id` for the same caller."""

    def __init__(self, idempotency: Idempotency | None) -> None:
        self._idempotency = idempotency

    async def once(
        self,
        principal: Principal,
        bearer: str,
        method: str,
        request: Message,
        response_type: type[Response],
        produce: Callable[[], Awaitable[Response]],
    ) -> Response:
        """`produce()`'s response, or the sealed response of the first request with the same
        `request_id` from the same caller within the retention. Without a request id, an
        idempotency store or a bearer secret, `produce()` runs as it is."""
        request_id = str(getattr(request, "request_id", ""))
        if not request_id or self._idempotency is None or not bearer:
            return await produce()
        scope = f"{method}|{principal.subject}"
        bare = type(request)()
        bare.CopyFrom(request)
        bare.ClearField("request_id")
        begun = await self._idempotency.begin(
            principal.tenant_id,
            scope,
            request_id,
            fingerprint(bare.SerializeToString(deterministic=True)),
        )
        binding = f"{principal.tenant_id}\x1f{scope}\x1f{request_id}".encode()
        if isinstance(begun, Replay):
            return response_type.FromString(_open(bearer, binding, begun.outcome, request_id))
        try:
            response = await produce()
        except BaseException:
            await self._idempotency.release(begun)
            raise
        try:
            await self._idempotency.complete(
                begun, _seal(bearer, binding, response.SerializeToString())
            )
        except Exception:
            # The write happened; its outcome could not be kept. Free the key: a retry then
            # runs again (a second key), which is what a caller without request_id gets.
            await self._idempotency.release(begun)
        return response


def _cipher(bearer: str, binding: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=binding).derive(
        bearer.encode()
    )
    return AESGCM(key)


def _seal(bearer: str, binding: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + _cipher(bearer, binding).encrypt(nonce, plaintext, binding)


def _open(bearer: str, binding: bytes, sealed: bytes, request_id: str) -> bytes:
    nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
    try:
        if sealed[:1] != _VERSION:
            raise InvalidTag
        return _cipher(bearer, binding).decrypt(nonce, body, binding)
    except InvalidTag:
        # Only the caller's own secret opens it: after a rotation of that very key, the
        # caller retries with another secret. Say so rather than run the write twice.
        raise FailedPrecondition(
            f"the outcome of request {request_id!r} is sealed with the credential that made "
            "it, which this call does not carry; retry with that credential, or use a new "
            "request_id",
            reason=reasons.REQUEST_ID_REUSED,
            metadata={"request_id": request_id},
        ) from None
