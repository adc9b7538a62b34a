"""Who may call which route, in one place: the session cookie, the CSRF check and the role table.

``authorize`` is an app-wide dependency: it runs before every route, looks the route up in
``ACCESS`` (a route missing from the table is refused, so a new route cannot be left open by
accident), finds the signed-in user from the session cookie, checks the role and, for every
state-changing request, the CSRF token. Which projects, items and assignments a user may touch is
the Store's business (it raises ``NotFound``/``Forbidden``); which kinds of page a role may open is
decided here.

CSRF. A signed-in user's requests carry the session's token (``Store.create_session`` makes it):
the hidden form field ``csrf_token``, or the ``X-CSRF-Token`` header for JSON. The two forms a user
posts before having a session (``/login`` and ``/invite/{token}``) use a double-submit cookie
instead: the page sets a random ``rlhflab_prelogin`` cookie (HttpOnly, SameSite=Lax) and puts the
same value in the form; the POST must bring both, equal. Another site can make a browser send the
cookie but can neither read it nor guess it, so it cannot forge the form field. (We chose this over
an Origin/Referer check, which proxies and privacy settings can strip or rewrite.)
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from rlhflab.app.store import UserInfo

SESSION_COOKIE = "rlhflab_session"
PRELOGIN_COOKIE = "rlhflab_prelogin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

PUBLIC: tuple[str, ...] = ()  # no session needed
SIGNED_IN = ("admin", "annotator", "reviewer")
ANNOTATOR = ("annotator",)  # labelling; the Store also checks the project membership's role
STAFF = ("admin", "reviewer")  # dashboards, disagreements, gold answers (of their projects: the Store)
ADMIN = ("admin",)

# "METHOD path" (the route's path as declared) -> the roles that may call it; PUBLIC for everyone.
ACCESS: dict[str, tuple[str, ...]] = {
    "GET /login": PUBLIC,
    "POST /login": PUBLIC,
    "GET /invite/{token}": PUBLIC,
    "POST /invite/{token}": PUBLIC,
    "POST /logout": SIGNED_IN,
    "GET /": SIGNED_IN,
    "GET /projects/{project_id:int}/instructions": SIGNED_IN,
    "POST /projects/{project_id:int}/instructions": SIGNED_IN,
    "GET /projects/{project_id:int}/label": ANNOTATOR,
    "POST /projects/{project_id:int}/label": ANNOTATOR,
    "POST /projects/{project_id:int}/skip": ANNOTATOR,
    "GET /api/projects/{project_id:int}/next": ANNOTATOR,
    "POST /api/projects/{project_id:int}/labels": ANNOTATOR,
    "GET /projects/{project_id:int}/dashboard": STAFF,
    "GET /api/projects/{project_id:int}/stats": STAFF,
    "GET /projects/{project_id:int}/review": STAFF,
    "POST /projects/{project_id:int}/gold": STAFF,
    "POST /projects/{project_id:int}/exclude": ADMIN,
    "GET /projects/{project_id:int}/export": ADMIN,
    "GET /admin": ADMIN,
    "POST /admin/invitations": ADMIN,
    "POST /admin/members": ADMIN,
}

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class Principal:
    """The caller: the signed-in user (None on a public page) and the CSRF token its forms carry."""

    user: UserInfo | None
    csrf_token: str


class LoginRequired(Exception):
    """No valid session: pages redirect to /login, the JSON API answers 401."""


class AccessDenied(Exception):
    """Signed in, but the role may not use this route, or the CSRF token is missing or wrong (403)."""


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def rule_for(method: str, path: str) -> tuple[str, ...]:
    """The roles allowed on a route; a route without an entry in ``ACCESS`` is a programming error."""
    key = f"{'GET' if method == 'HEAD' else method} {path}"
    if key not in ACCESS:
        raise RuntimeError(f"no access rule for {key}: add it to rlhflab.app.auth.ACCESS")
    return ACCESS[key]


async def submitted_csrf_token(request: Request) -> str:
    """The token the request brings: the header, else the form field (the form is parsed once and
    cached on the request, so the route reads it again for free)."""
    token = request.headers.get(CSRF_HEADER)
    if token:
        return token
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def tokens_match(expected: str | None, given: str) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())


async def authorize(request: Request) -> Principal:
    """The app-wide dependency (cached per request, so routes take it again as a parameter)."""
    route = request.scope.get("route")
    roles = rule_for(request.method, route.path)
    store = request.app.state.store
    token = request.cookies.get(SESSION_COOKIE)
    found = await run_in_threadpool(store.session_user, token) if token else None
    unsafe = request.method not in SAFE_METHODS

    if not roles:  # public: the forms posted before sign-in carry the double-submit cookie's value
        if unsafe and not tokens_match(request.cookies.get(PRELOGIN_COOKIE), await submitted_csrf_token(request)):
            raise AccessDenied("the form has expired or did not come from this site; reload the page")
        return Principal(*found) if found is not None else Principal(None, "")

    if found is None:
        raise LoginRequired()
    user, csrf_token = found
    if user.role not in roles:
        raise AccessDenied(f"a {user.role} may not open this page")
    if unsafe and not tokens_match(csrf_token, await submitted_csrf_token(request)):
        raise AccessDenied("missing or wrong CSRF token; reload the page and try again")
    return Principal(user, csrf_token)


def prelogin_token(request: Request) -> str:
    """The double-submit value for a public form: the browser's cookie if it has one, else a new one
    (the page then sets the cookie with ``set_prelogin_cookie``)."""
    return request.cookies.get(PRELOGIN_COOKIE) or secrets.token_urlsafe(32)


def set_prelogin_cookie(response, token: str, secure: bool) -> None:
    response.set_cookie(PRELOGIN_COOKIE, token, max_age=3600, path="/", secure=secure, httponly=True, samesite="lax")


def set_session_cookie(response, token: str, secure: bool) -> None:
    """HttpOnly (no script reads it), SameSite=Lax (not sent on cross-site POSTs), Secure behind https."""
    response.set_cookie(SESSION_COOKIE, token, path="/", secure=secure, httponly=True, samesite="lax")
    response.delete_cookie(PRELOGIN_COOKIE, path="/", secure=secure, httponly=True, samesite="lax")


def clear_session_cookie(response, secure: bool) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="lax")
