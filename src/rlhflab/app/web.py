"""The feedback app: ``create_app`` puts the routers, the error handlers and the middleware together.

Routes live in ``rlhflab.app.routes`` (``auth``, ``labelling``, ``review``, ``adjudication``, ``admin``), each an
``APIRouter``; what they depend on (the store, the caller, the parsed body, the one authorisation
check and its route→roles table) in ``rlhflab.app.deps``; what pages show in ``rlhflab.app.views``.
The Store filters by ownership and raises ``NotFound`` (404) or ``Forbidden`` (403).

Pages: ``/login``, ``/logout``, ``/invite/{token}``, ``/`` (my projects), ``/projects/{id}/instructions``,
``/projects/{id}/label`` (the next task; POST submits it), ``/projects/{id}/skip``,
``/projects/{id}/dashboard``, ``/projects/{id}/review``, ``/projects/{id}/gold``, ``/projects/{id}/adjudicate``,
``/projects/{id}/exclude``, ``/projects/{id}/export?kind=…``, ``/admin``, ``/admin/invitations``,
``/admin/members``. JSON: ``GET /api/projects/{id}/next``, ``POST /api/projects/{id}/labels``,
``GET /api/projects/{id}/stats``.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from rlhflab.app.deps import AccessDenied, LoginRequired, authorize
from rlhflab.app.middleware import BODY_READ_TIMEOUT_S, HeadAsGet, LimitBody, SecurityHeaders
from rlhflab.app.routes import adjudication, admin, auth, labelling, review
from rlhflab.app.store import Forbidden, NotFound, Store
from rlhflab.app.tasks import LabelError
from rlhflab.app.views import HERE, is_api, render, see_other
from rlhflab.errors import ConfigError, RlhflabError

# Every route is in one of these (the authorisation matrix test enumerates them).
ROUTERS = (auth.router, labelling.router, review.router, adjudication.router, admin.router)
# Where `rlhflab serve` listens unless told otherwise, and so where invitation links point.
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
# The environment variable through which `rlhflab serve --workers N` hands each worker process the
# keyword arguments of ``create_app`` (JSON): uvicorn starts workers from an import string.
SERVE_OPTIONS_ENV = "RLHFLAB_SERVE_OPTIONS"


def public_base(url: str) -> str:
    """The address people reach the app at, as links begin: http(s)://host[:port][/path], no query."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"public URL '{url}': give http(s)://HOST[:PORT][/PATH], e.g. https://feedback.example.org")
    return url.strip().rstrip("/")


def error(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
    """Pages get a page, the API gets JSON."""
    if is_api(request):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    response = render(request, "error.html", None, status, code=status, message=message)
    response.headers.update(headers or {})
    return response


async def login_required(request: Request, exc: LoginRequired) -> Response:
    if is_api(request):
        return JSONResponse({"detail": "sign in first"}, status_code=401, headers={"WWW-Authenticate": "Session"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/"
    return see_other("/login?next=" + quote(target, safe=""))


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404 and not exc.detail:
        return error(request, 404, "not found")
    return error(request, exc.status_code, str(exc.detail), exc.headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
    return error(request, 422, problems or "invalid request")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(AccessDenied, lambda request, exc: error(request, 403, str(exc)))
    app.add_exception_handler(NotFound, lambda request, exc: error(request, 404, str(exc) or "not found"))
    app.add_exception_handler(Forbidden, lambda request, exc: error(request, 403, str(exc) or "not allowed"))
    app.add_exception_handler(LabelError, lambda request, exc: error(request, 422, str(exc)))
    app.add_exception_handler(RlhflabError, lambda request, exc: error(request, 400, str(exc)))
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)


def create_app(
    url: str | None = None,
    *,
    secure_cookies: bool = False,
    store: Store | None = None,
    public_url: str = DEFAULT_PUBLIC_URL,
    read_timeout: float = BODY_READ_TIMEOUT_S,
) -> FastAPI:
    """The feedback app over the database at ``url`` (default: ``db.default_db_url()``), or over an
    existing ``store``. ``secure_cookies`` marks cookies Secure (serve behind https); ``public_url``
    is the address people reach the app at, which invitation links begin with; ``read_timeout``
    the seconds a request body may pause before the request is answered 408."""
    app = FastAPI(
        title="rlhflab feedback",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(authorize)],
    )
    app.state.public_url = public_base(public_url)
    app.state.store = store if store is not None else Store(url)
    app.state.secure_cookies = secure_cookies
    for router in ROUTERS:
        app.include_router(router)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(LimitBody, read_timeout=read_timeout)
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders)  # added last: the outermost, so every response has its headers
    return app


def app_from_environment() -> FastAPI:
    """``create_app(**options)`` with the options ``rlhflab serve`` put in ``$RLHFLAB_SERVE_OPTIONS``:
    the factory each of its ``--workers`` processes builds its own app (and Store) with."""
    return create_app(**json.loads(os.environ.get(SERVE_OPTIONS_ENV) or "{}"))
