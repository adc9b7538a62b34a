"""Administration: people, invitations and project memberships (``/admin``)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from rlhflab.app.deps import Db, Form, Principal, Who, parse_id
from rlhflab.app.store import Store
from rlhflab.app.tasks import ROLES
from rlhflab.app.views import render, see_other

router = APIRouter()


def admin_page(request: Request, who: Principal, store: Store, status: int = 200, **context: Any) -> Response:
    return render(
        request,
        "admin.html",
        who,
        status,
        projects=store.projects_for(who.user),
        users=store.users(who.user),
        invitations=store.invitations(who.user),
        **context,
    )


@router.get("/admin")
def admin(request: Request, who: Who, store: Db, added: str = "") -> Response:
    return admin_page(request, who, store, added=added)


@router.post("/admin/invitations")
def invite(request: Request, who: Who, store: Db, form: Form) -> Response:
    role = form.get("role", "")
    if role not in ROLES:
        raise HTTPException(422, f"role must be one of {', '.join(ROLES)}")
    projects = [str(p) for p in form.getlist("projects")]
    token = store.create_invitation(role, who.user.id, projects)
    # From the configured public address, never from the request's Host header, which the client
    # chooses: a link built from it would send an invited person wherever a forged request said.
    link = request.app.state.public_url + "/invite/" + quote(token, safe="")
    return admin_page(request, who, store, 201, invitation={"link": link, "role": role, "projects": projects})


@router.post("/admin/members")
def members(who: Who, store: Db, form: Form) -> Response:
    role = form.get("role", "annotator")
    if role not in ("annotator", "reviewer"):
        raise HTTPException(422, "role must be annotator or reviewer")
    project = store.project(parse_id(form.get("project", ""), "project"), who.user)
    usernames = [u for u in re.split(r"[\s,]+", str(form.get("usernames", ""))) if u]
    if not usernames:
        raise HTTPException(422, "name at least one user")
    store.add_members(project.id, usernames, role, user=who.user)
    return see_other("/admin?added=" + quote(project.name))
