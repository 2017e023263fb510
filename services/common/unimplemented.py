"""Contract RPCs whose behaviour belongs to a later milestone answer UNIMPLEMENTED, by name.

The generated servicer base classes already answer UNIMPLEMENTED, but with a bare "Method not
implemented!". `pending_rpcs` replaces those defaults with handlers that raise
`Unimplemented`, so a caller learns which method is missing and what it is waiting for, in the
message and in `ErrorInfo.metadata`. No handler here pretends to succeed.
"""

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from services.common.errors import Unimplemented

ServicerT = TypeVar("ServicerT", bound=type)


def pending_rpcs(service: str, missing: Mapping[str, str]) -> Callable[[ServicerT], ServicerT]:
    """Class decorator: each `method -> what it needs` entry becomes a handler raising
    `Unimplemented(method="<service>/<method>", missing=...)`.

    Raises TypeError at import time when an entry names a method the servicer base does not
    have, or one the class already implements, so the table cannot drift from the contract.
    """

    def decorate(cls: ServicerT) -> ServicerT:
        for method, needs in missing.items():
            if not callable(getattr(cls, method, None)):
                raise TypeError(f"{cls.__name__} has no RPC method {method!r}")
            if method in vars(cls):
                raise TypeError(f"{cls.__name__}.{method} is implemented; drop it from pending")
            setattr(cls, method, _raising_handler(f"{service}/{method}", needs))
        return cls

    return decorate


def _raising_handler(full_method: str, needs: str) -> Callable[..., Any]:
    async def handler(self: object, request: object, context: object) -> Any:
        raise Unimplemented(method=full_method, missing=needs)

    handler.__name__ = full_method.rsplit("/", 1)[-1]
    handler.__doc__ = f"Not implemented yet: needs {needs}."
    return handler
