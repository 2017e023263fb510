"""Checks that the router's catalog and InferenceService's models agree, when one process hosts
both: every catalog model must be served, and each of its backends must be the same backend
(id, kind, endpoint, backend model) in InferenceService's settings. A mismatch would route
requests to a backend id InferenceService does not know, or price and health-check a different
endpoint than the one that serves; it is refused at start, naming each problem."""

from services.inference.config import InferenceSettings
from services.router.core.catalog import BackendKind, Catalog


def catalog_problems(
    catalog: Catalog, inference: InferenceSettings, local_triton: str
) -> list[str]:
    """What disagrees between `catalog` and `inference` (empty when they agree). Triton
    endpoints left empty mean `local_triton` on both sides."""
    problems: list[str] = []
    served = {model.name: model for model in inference.models}
    for model in catalog.models:
        serving = served.get(model.name)
        if serving is None:
            problems.append(
                f"router catalog model {model.name!r} is not in inference.models "
                f"(served: {', '.join(sorted(served))})"
            )
            continue
        backends = {backend.id: backend for backend in serving.backends}
        for entry in model.backends:
            where = f"router catalog model {model.name!r} backend {entry.id!r}"
            backend = backends.get(entry.id)
            if backend is None:
                problems.append(
                    f"{where} is not a backend of inference model {model.name!r} "
                    f"(its backends: {', '.join(sorted(backends))})"
                )
                continue
            triton = entry.kind is BackendKind.TRITON
            kind = "triton" if triton else "openai_compatible"
            if backend.kind != kind:
                problems.append(f"{where} is {kind} in the catalog, {backend.kind} in inference")
                continue
            served_model = backend.triton_model if triton else backend.provider_model
            if entry.backend_model != served_model:
                problems.append(
                    f"{where} names model {entry.backend_model!r}, inference serves "
                    f"{served_model!r} there"
                )
            endpoint = (backend.endpoint or local_triton) if triton else backend.endpoint
            if entry.endpoint.rstrip("/") != endpoint.rstrip("/"):
                problems.append(
                    f"{where} is at {entry.endpoint or '(local Triton)'!s}, inference reaches "
                    f"it at {endpoint or '(local Triton)'}"
                )
    return problems
