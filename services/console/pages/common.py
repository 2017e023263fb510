"""What several page modules share: guarding views of an optional service, links with a query,
reads a page can go without, and paging through a List RPC."""

import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import grpc
from starlette.requests import Request
from starlette.responses import Response

from services.console.web import Console, Failure, Stubs, View, Visitor

S = TypeVar("S")
T = TypeVar("T")


class Paged(Protocol):
    """A List RPC's response."""

    @property
    def next_page_token(self) -> str: ...


P = TypeVar("P", bound=Paged)
StubView = Callable[[Request, Visitor, S], Awaitable[Response]]
"""A view of a page that calls one optional service, given that service's stub."""


def guarded(
    console: Console, stub_of: Callable[[Stubs], S | None], missing: Failure, title: str
) -> Callable[[StubView[S]], View]:
    """A decorator that gives a view the stub `stub_of` picks, or shows `missing` (with the
    page title `title`) where the platform runs no such service."""

    def wrap(view: StubView[S]) -> View:
        async def run(request: Request, visitor: Visitor) -> Response:
            stub = stub_of(visitor.stubs)
            if stub is None:
                return console.failure_page(request, visitor, missing, title=title)
            return await view(request, visitor, stub)

        return run

    return wrap


def status_of(failure: Failure | None) -> int:
    """The HTTP status of a page that shows `failure` (200 without one)."""
    return failure.http_status if failure is not None else 200


def quote(value: str) -> str:
    """`value` as one path segment."""
    return urllib.parse.quote(value, safe="")


def query(**values: str) -> str:
    """`?a=1&b=2` of the non-empty `values` ('' when none)."""
    kept = {name: value for name, value in values.items() if value}
    return f"?{urllib.parse.urlencode(kept)}" if kept else ""


def link(path: str, **values: str) -> str:
    """`path` with the query of the non-empty `values`."""
    return path + query(**values)


async def optional(awaitable: Awaitable[T]) -> tuple[T | None, Failure | None]:
    """The value of a read a page can go without, or (None, why it failed)."""
    try:
        return await awaitable, None
    except grpc.aio.AioRpcError as error:
        return None, Failure.of_rpc(error)


def unread(failure: Failure | None, what: str) -> str:
    """A sentence saying that `what` could not be read and why; '' without a failure."""
    return f"{what} could not be read ({failure.code}: {failure.message})" if failure else ""


async def pages(
    fetch: Callable[[str], Awaitable[P]], *, limit: int, token: str = ""
) -> AsyncIterator[P]:
    """The pages of a List RPC from `token` on, `fetch(page_token)` each, until the last one
    or `limit` pages."""
    for _ in range(limit):
        page = await fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return
