"""Signing in and out, and accepting an invitation: ``/login``, ``/logout``, ``/invite/{token}``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhflab.app.auth import (
    SESSION_COOKIE,
    clear_session_cookie,
    prelogin_token,
    set_prelogin_cookie,
    set_session_cookie,
)
from rlhflab.app.deps import Db, Form, Who
from rlhflab.app.store import MIN_PASSWORD_LENGTH, NotFound, StoreError, TooManyLogins
from rlhflab.app.views import render, safe_next, see_other

router = APIRouter()
INVALID_INVITATION = "this invitation link is not valid: it was used, has expired, or never existed"


def login_form(request: Request, next: str, error: str = "", status: int = 200, username: str = "") -> Response:
    token = prelogin_token(request)
    response = render(
        request, "login.html", None, status, form_token=token, next=safe_next(next), error=error, username=username
    )
    set_prelogin_cookie(response, token, request.app.state.secure_cookies)
    return response


@router.get("/login")
def login_page(request: Request, who: Who, next: str = "/") -> Response:
    if who.user is not None:
        return see_other(safe_next(next))
    return login_form(request, next)


@router.post("/login")
def login(request: Request, who: Who, store: Db, form: Form) -> Response:
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    address = request.client.host if request.client else None
    try:
        user = store.authenticate(username, password, address) if username and password else None
    except TooManyLogins as exc:
        response = login_form(request, str(form.get("next", "/")), str(exc), 429, username)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if user is None:
        return login_form(request, str(form.get("next", "/")), "Wrong username or password.", 400, username)
    if request.cookies.get(SESSION_COOKIE):  # signing in as someone else: end the old session
        store.end_session(request.cookies[SESSION_COOKIE])
    token, _ = store.create_session(user.id)
    response = see_other(safe_next(str(form.get("next", "/"))))
    set_session_cookie(response, token, request.app.state.secure_cookies)
    return response


@router.post("/logout")
def logout(request: Request, who: Who, store: Db) -> Response:
    store.end_session(request.cookies.get(SESSION_COOKIE, ""))
    response = see_other("/login")
    clear_session_cookie(response, request.app.state.secure_cookies)
    return response


def invite_form(request: Request, token: str, invitation: dict, error: str = "", status: int = 200, username=""):
    form_token = prelogin_token(request)
    response = render(
        request,
        "invite.html",
        None,
        status,
        form_token=form_token,
        token=token,
        invitation=invitation,
        error=error,
        username=username,
        min_password=MIN_PASSWORD_LENGTH,
    )
    set_prelogin_cookie(response, form_token, request.app.state.secure_cookies)
    return response


@router.get("/invite/{token}")
def invite_page(request: Request, token: str, who: Who, store: Db) -> Response:
    invitation = store.invitation(token)
    if invitation is None:
        raise NotFound(INVALID_INVITATION)
    return invite_form(request, token, invitation)


@router.post("/invite/{token}")
def accept_invite(request: Request, token: str, who: Who, store: Db, form: Form) -> Response:
    invitation = store.invitation(token)
    if invitation is None:
        raise NotFound(INVALID_INVITATION)
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    if password != form.get("password2", ""):
        return invite_form(request, token, invitation, "The two passwords differ.", 400, username)
    try:
        user = store.accept_invitation(token, username, password)
    except NotFound:
        raise
    except StoreError as exc:
        return invite_form(request, token, invitation, str(exc), 400, username)
    session, _ = store.create_session(user.id)
    response = see_other("/")
    set_session_cookie(response, session, request.app.state.secure_cookies)
    return response
