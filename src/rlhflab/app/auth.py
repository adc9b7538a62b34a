"""Sessions and CSRF: the session cookie, the CSRF token a request brings, and how tokens compare.

The check itself runs in one place, ``rlhflab.app.deps.authorize`` (with the route→roles table).

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

from starlette.requests import Request

SESSION_COOKIE = "rlhflab_session"
PRELOGIN_COOKIE = "rlhflab_prelogin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def submitted_csrf_token(request: Request) -> str:
    """The token the request brings: the header, else the form field (the form is parsed once and
    cached on the request, so the route reads it again for free)."""
    token = request.headers.get(CSRF_HEADER)
    if token:
        return token
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        await request.body()  # kept on the request: a route reading the body as JSON still can
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def tokens_match(expected: str | None, given: str) -> bool:
    # surrogatepass: a forged token holding a lone surrogate is simply unequal, not an encoding error
    def raw(token: str) -> bytes:
        return token.encode("utf-8", "surrogatepass")

    return bool(expected) and bool(given) and hmac.compare_digest(raw(expected), raw(given))


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
