"""One backend for the engine in front of several: each call goes to the adapter of the
backend's kind, so one InferenceService serves Triton and OpenAI-compatible models side by
side."""

from collections.abc import AsyncGenerator, Mapping, Sequence

from services.common.errors import FailedPrecondition
from services.inference.core.model import (
    BackendChunk,
    BackendKind,
    BackendRequest,
    BackendSpec,
    Embeddings,
    GenerationBackend,
    ModelState,
)


class DispatchingBackend:
    """A `GenerationBackend` that hands each call to `backends[spec.kind]`."""

    def __init__(self, backends: Mapping[BackendKind, GenerationBackend]) -> None:
        self._backends = dict(backends)

    @property
    def kinds(self) -> frozenset[BackendKind]:
        """The kinds of backend this dispatcher has an adapter for."""
        return frozenset(self._backends)

    def _for(self, spec: BackendSpec) -> GenerationBackend:
        backend = self._backends.get(spec.kind)
        if backend is None:
            # The composition root gives an adapter for every configured kind; reaching this
            # is a wiring mistake, reported without internals.
            raise FailedPrecondition(
                f"backend {spec.id} is of kind {spec.kind.value}, which this service does not "
                "serve",
                metadata={"backend_id": spec.id, "kind": spec.kind.value},
            )
        return backend

    def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        """The stream of the adapter of `spec.kind` itself (no wrapper on the hot path)."""
        return self._for(spec).generate(spec, request)

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> Embeddings:
        """Embeds through the adapter of `spec.kind`."""
        return await self._for(spec).embed(spec, texts)

    async def model_state(self, spec: BackendSpec) -> ModelState:
        """Asks the adapter of `spec.kind`."""
        return await self._for(spec).model_state(spec)
