"""The web console: `console_routes(console)` gives the routes the gateway serves under
`/console` on the platform's HTTP server (`ServiceRegistration.http_routes`).

| page | what it calls (with the visitor's key) |
|---|---|
| `/console/sign-in` | the process's authenticator |
| `/console/prompts`, `/prompts/{name}`, `.../versions/{v}`, `.../diff`, `.../labels` | PromptService |
| `/console/prompts/{name}/playground` | PromptService `RenderPrompt`, GatewayService `StreamComplete` |
| `/console/experiments`, `/experiments/{name}` | ExperimentService |
| `/console/evaluations`, datasets, runs, reports, comparisons | EvaluationService |
| `/console/logs`, `/logs/{request_id}` | GatewayService `ListRequestLogs` |
| `/console/alerts` | EvaluationService `ListQualityAlerts` |
| `/console/models` | RouterService `ListModels`, `GetBackendHealth` |

Pages are rendered on the server (Jinja2, autoescaped) and work without script; a little
script (`static/console.js`, no build step) streams the playground's answer and polls a
running evaluation. Every action is a POST form with the session's CSRF token, answered with a
303 to the page that shows its result.
"""

import time
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from services.common.errors import PermissionDenied, Unauthenticated
from services.console import formatting
from services.console.pages import evaluations, experiments, logs, playground, prompts
from services.console.web import (
    PREFIX,
    SESSION_ENDED,
    SIGN_IN_PATH,
    STATIC,
    Console,
    form_text,
    redirect,
    safe_next,
    secured,
)

SIGN_IN_FIELD: Final = "api_key"


def console_routes(console: Console) -> list[BaseRoute]:
    """Every console route, mounted at `/console`."""

    async def root(request: Request) -> Response:
        session = console.session_of(request)
        return redirect(f"{PREFIX}/prompts" if session else SIGN_IN_PATH)

    async def sign_in_page(request: Request) -> Response:
        return console.render(
            request,
            "sign_in.html",
            title="Sign in",
            next=safe_next(request.query_params.get("next")),
            why=SESSION_ENDED if request.query_params.get("why") == "ended" else "",
            error="",
            auth_enabled=console.auth_enabled,
            lifetime=formatting.seconds(console.codec.lifetime_seconds),
        )

    async def sign_in(request: Request) -> Response:
        form = await request.form()
        api_key = form_text(form, SIGN_IN_FIELD).strip()
        target = safe_next(form_text(form, "next"))
        error = ""
        if console.auth_enabled and not api_key:
            error = "Enter an API key."
        else:
            try:
                await console.principal_of(api_key)
            except (Unauthenticated, PermissionDenied) as refused:
                error = f"This key was refused: {refused}"
        if error:
            return console.render(
                request,
                "sign_in.html",
                status=401,
                title="Sign in",
                next=target,
                why="",
                error=error,
                auth_enabled=console.auth_enabled,
                lifetime=formatting.seconds(console.codec.lifetime_seconds),
            )
        response = redirect(target)
        console.set_session(response, console.codec.new(api_key, now=time.time()))
        return response

    async def sign_out(request: Request) -> Response:
        # No CSRF check is needed to sign out: the worst a forged one does is sign you out.
        response = redirect(SIGN_IN_PATH)
        console.clear_session(response)
        return secured(response)

    routes: list[BaseRoute] = [
        Route("/", root, methods=["GET"]),
        Route("/sign-in", sign_in_page, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        *prompts.routes(console),
        *playground.routes(console),
        *experiments.routes(console),
        *evaluations.routes(console),
        *logs.routes(console),
    ]
    return [Mount(PREFIX, routes=routes)]
