"""The web console as its integration tests reach it: a signed-in HTTP client (its cookie jar
holds the session, as a browser's does) and the CSRF token of a page's forms."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import httpx

CSRF: Final = re.compile(r'name="csrf_token" value="([^"]+)"')


@asynccontextmanager
async def signed_in(base_url: str, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the console at `base_url` (`http://HOST:PORT`) signed in with `api_key`."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        answer = await client.post("/console/sign-in", data={"api_key": api_key})
        assert answer.status_code == 303, answer.text
        yield client


def csrf_of(page: httpx.Response | str) -> str:
    """The CSRF token in a console page's forms (every signed-in page has the sign-out form)."""
    text = page if isinstance(page, str) else page.text
    found = CSRF.search(text)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)
