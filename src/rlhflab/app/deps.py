"""What every route depends on: the store, the caller (``Who``) and the one authorisation check,
and the request's form or JSON body, parsed once and checked before any route sees it.

``authorize`` is an app-wide dependency: it runs before every route, looks the route up in
``ACCESS`` (a route missing from the table is refused, so a new route cannot be left open by
accident), finds the signed-in user from the session cookie, checks the role and, for every
state-changing request, the CSRF token (``rlhflab.app.auth``). Which projects, items and assignments
a user may touch is the Store's business (it raises ``NotFound``/``Forbidden``); which kinds of page a
role may open is decided here, so the authorisation matrix test covers a single mechanism.

Bodies are hostile until checked: JSON is bounded in nesting depth and number size *before* the
parser runs (Python's parser recurses, and converting a 5,000-digit literal is refused by the
interpreter), and no text with a NUL or a lone UTF-16 surrogate reaches the Store (PostgreSQL
refuses NUL in text; a lone surrogate cannot be encoded as UTF-8 on the way back out).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from rlhflab.app.auth import PRELOGIN_COOKIE, SAFE_METHODS, SESSION_COOKIE, submitted_csrf_token, tokens_match
from rlhflab.app.store import MAX_ID, NotFound, Store, UserInfo
from rlhflab.app.tasks import LabelError
from rlhflab.app.text import first_unstorable, unstorable_text


class IdConvertor(Convertor[int]):
    """``{name:id}`` in a route's path: a database id, at most 19 ASCII digits (the most a 64-bit id
    has). Starlette's ``:int`` takes any number of digits and converts them while matching, so a
    5,000-digit segment made it fail (500) instead of matching no route (404); the id's range
    within those digits is checked by the Store."""

    regex = "[0-9]{1,19}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())

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
    "GET /projects/{project_id:id}/instructions": SIGNED_IN,
    "POST /projects/{project_id:id}/instructions": SIGNED_IN,
    "GET /projects/{project_id:id}/label": ANNOTATOR,
    "POST /projects/{project_id:id}/label": ANNOTATOR,
    "POST /projects/{project_id:id}/skip": ANNOTATOR,
    "GET /api/projects/{project_id:id}/next": ANNOTATOR,
    "POST /api/projects/{project_id:id}/labels": ANNOTATOR,
    "GET /projects/{project_id:id}/dashboard": STAFF,
    "GET /api/projects/{project_id:id}/stats": STAFF,
    "GET /projects/{project_id:id}/review": STAFF,
    "POST /projects/{project_id:id}/gold": STAFF,
    "GET /projects/{project_id:id}/adjudicate": STAFF,
    "POST /projects/{project_id:id}/adjudicate": STAFF,
    "POST /projects/{project_id:id}/exclude": ADMIN,
    "GET /projects/{project_id:id}/export": ADMIN,
    "GET /admin": ADMIN,
    "POST /admin/invitations": ADMIN,
    "POST /admin/members": ADMIN,
}

# A label is at most three levels deep ({"value": {"scores": {...}}}); anything far deeper is an attack.
MAX_JSON_DEPTH = 20
# Digits in one JSON number literal: ids are at most 19 digits, and nothing the app reads needs more.
MAX_NUMBER_DIGITS = 40
# A JSON string (escapes included, so `"\"\\"` is one string); removed before brackets are counted.
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
JSON_BRACKET = re.compile(r"[\[\]{}]")
ASCII_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Principal:
    """The caller: the signed-in user (None on a public page) and the CSRF token its forms carry."""

    user: UserInfo | None
    csrf_token: str


class LoginRequired(Exception):
    """No valid session: pages redirect to /login, the JSON API answers 401."""


class AccessDenied(Exception):
    """Signed in, but the role may not use this route, or the CSRF token is missing or wrong (403)."""


def rule_for(method: str, path: str) -> tuple[str, ...]:
    """The roles allowed on a route; a route without an entry in ``ACCESS`` is a programming error."""
    key = f"{'GET' if method == 'HEAD' else method} {path}"
    if key not in ACCESS:
        raise RuntimeError(f"no access rule for {key}: add it to rlhflab.app.deps.ACCESS")
    return ACCESS[key]


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


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def form_body(request: Request) -> FormData:
    """The form (parsed once; the CSRF check may already have read it), refused with 422 naming the
    first field whose name or value no database column could store."""
    form = await request.form()
    for name, value in form.multi_items():
        for text in (name, value) if isinstance(value, str) else (name,):
            problem = unstorable_text(text)
            if problem:
                raise HTTPException(422, f"field '{name}' {problem}")
    return form


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest, counted without parsing it (brackets inside
    strings do not count)."""
    steps = (1 if b in "[{" else -1 for b in JSON_BRACKET.findall(JSON_STRING.sub("", text)))
    return max(itertools.accumulate(steps, initial=0))


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of {len(literal)} digits (at most {MAX_NUMBER_DIGITS})")
    return int(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:20]} is out of range")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """A request's JSON body (UTF-8, as RFC 8259 requires), bounded before parsing; 422 for anything
    malformed, too deep, too large a number, or holding text no column can store."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(422, f"malformed JSON: not UTF-8 ({exc.reason})") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise HTTPException(422, f"malformed JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        value = json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError, as are the bounds above
        raise HTTPException(422, f"malformed JSON: {exc}") from None
    found = first_unstorable(value)
    if found:
        raise HTTPException(422, f"field '{found[0]}' {found[1]}")
    return value


async def json_body(request: Request) -> Any:
    return parse_json(await request.body())


Who = Annotated[Principal, Depends(authorize)]
Db = Annotated[Store, Depends(get_store)]
Form = Annotated[FormData, Depends(form_body)]
Json = Annotated[Any, Depends(json_body)]


# ---- values from forms and bodies -------------------------------------------------------------------


def parse_seconds(raw: Any) -> float:
    """Seconds spent on the item, as the page measured them; 0 when missing or nonsense."""
    try:
        seconds = float(raw)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return min(seconds, 86400.0) if math.isfinite(seconds) and seconds > 0 else 0.0


def parse_int(raw: Any, what: str) -> int:
    """An integer from JSON or a form field: ASCII digits only (``int()`` would also take "٣")."""
    if isinstance(raw, bool):
        raise LabelError(f"{what} must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and len(raw.strip()) <= 19 and ASCII_INTEGER.fullmatch(raw.strip()):
        return int(raw)
    raise LabelError(f"{what} must be an integer")


def parse_id(raw: Any, what: str) -> int:
    """A database id from a form field or a JSON body: 422 unless an integer; 404 (as for any id that
    names nothing) when it is outside the id columns' range, so no query is sent with it."""
    if isinstance(raw, str) and ASCII_INTEGER.fullmatch(raw.strip()) and len(raw.strip()) > 19:
        raise NotFound(f"no {what} {raw.strip()[:30]}")
    value = parse_int(raw, what)
    if not 1 <= value <= MAX_ID:
        raise NotFound(f"no {what} {value}")
    return value


def parse_key(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise LabelError("idempotency_key must be a non-empty string")
    return raw  # the Store checks its length and its characters
