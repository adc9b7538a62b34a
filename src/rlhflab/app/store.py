"""Every database operation of the feedback app, one short transaction each, with its permission check.

The web routes and ``rlhflab feedback`` call :class:`Store` and get plain frozen dataclasses back,
never ORM objects. Who may see what is decided here, in one place: an annotator sees only their own
assignments and labels, a reviewer the labels of the projects they review, an admin everything.
Anything a user may not see raises :class:`NotFound`, exactly as if it did not exist, so that no
one learns what exists by asking; :class:`Forbidden` is for what a user can see but may not do.

Handing out work is where concurrency bites. Each non-gold item goes to ``overlap`` distinct
annotators (several independent labels per item are what inter-annotator agreement is computed
from, Section 7.3.3), never twice to one annotator and never to more than ``overlap``. The
assignment is made in one transaction that checks the count and inserts the assignment: on SQLite
``BEGIN IMMEDIATE`` runs such transactions one at a time; on PostgreSQL the candidate item is locked
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent annotators take different items instead of
queueing on one) and its count re-read once the lock is held. Unique constraints back both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import math
import os
import random
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, bindparam, case, delete, exists, func, or_, select, update
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker

from rlhflab.app import models as m
from rlhflab.app.adjudication import adjudication_items, check_cause, counted_labels, needs_adjudication
from rlhflab.app.db import default_db_url, make_engine, migrate, read_only, single_statement
from rlhflab.app.export import ExportError, export_rows
from rlhflab.app.models import MAX_ID
from rlhflab.app.tasks import (
    DEFAULT_ATTRIBUTES,
    ROLES,
    TASKS,
    LabelError,
    answer_size,
    gold_agrees,
    items_from_samples,
    labels_disagree,
    prompt_key,
    read_gold,
    resolve_label,
    validate_gold,
    validate_label,
)
from rlhflab.app.text import first_unstorable, unstorable_text
from rlhflab.data import Samples, read_records, read_rows
from rlhflab.errors import ConfigError, DataError, RlhflabError
from rlhflab.seeds import derive_seed

T = TypeVar("T")

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
MIN_PASSWORD_LENGTH = 8
MAX_PROJECT_NAME = 100
MAX_IDEMPOTENCY_KEY = 128
SESSION_HOURS = 12
# The longest an invitation may stay valid (a timestamp this far ahead is still one every database holds).
MAX_INVITATION_HOURS = 24 * 366
# Login throttling (OWASP ASVS 2.2.1): this many failed sign-ins within LOGIN_WINDOW, for one account
# or from one address, refuse further attempts until the oldest of them is that old. The address
# limit is higher: people behind one NAT share it, and it is there for guessing across accounts.
LOGIN_WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 20
# A write that loses a race (a unique constraint, a PostgreSQL deadlock, a SQLite writer that waited
# out its busy timeout) is run again from the start, up to this many times.
WRITE_ATTEMPTS = 8


class StoreError(RlhflabError):
    """A request the store refuses for a reason the user can act on (a taken name, a used invitation)."""


class NotFound(StoreError):
    """The object does not exist, or the user may not see it (the two are indistinguishable on purpose)."""


class Forbidden(StoreError):
    """The user can see the object but may not do this to it."""


class TooManyLogins(StoreError):
    """Too many failed sign-ins lately, for the account or from the address (HTTP 429)."""

    def __init__(self, retry_after: int):
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(
            f"Too many failed sign-ins for this account or from this address; try again in {minutes} minute"
            + ("s" if minutes > 1 else "")
        )
        self.retry_after = retry_after


def check_id(value: Any, what: str) -> int:
    """``value`` if it can name a row (an integer within the id columns' range), else NotFound, as for
    any id that names nothing: the database is never asked about an id it could not hold."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise NotFound(f"no {what} {value!r}"[:80])
    return value


def check_text(value: str, what: str) -> str:
    problem = unstorable_text(value)
    if problem:
        raise StoreError(f"{what} {problem}")
    return value


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    role: str  # admin | annotator | reviewer


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    task: str
    attributes: list[str]
    overlap: int
    gold_rate: float
    qualification_items: int
    qualification_threshold: float
    instructions: str
    num_items: int
    created_at: dt.datetime


@dataclass(frozen=True)
class Task:
    """One item as one annotator sees it. ``completions`` are in displayed order:
    ``completions[j]`` is the item's completion ``shown_order[j]``."""

    assignment_id: int
    item_id: int
    project_id: int
    prompt: Any
    completions: list
    shown_order: list[int]
    is_gold: bool
    is_qualification: bool
    position: int  # this user's labels in the project + 1
    total: int  # how many items this user can be given in the project, in all


@dataclass(frozen=True)
class TaskPage:
    """What the labelling page shows (``Store.task_page``): the project, whether the user has read its
    instructions, the task (None: none now, or the instructions are unread), the user's progress
    (labels done, items they can be given in all) and qualification status."""

    project: ProjectInfo
    instructions_seen: bool
    task: Task | None
    done: int
    total: int
    qualification: str


@dataclass(frozen=True)
class LabelInfo:
    id: int
    item_id: int
    user_id: int
    value: dict  # as stored: original completion indices
    created_at: dt.datetime
    duplicate: bool  # True when a retried submission found the label its first attempt stored


@dataclass(frozen=True)
class InvitationInfo:
    id: int
    role: str
    projects: list[str]
    created_by: str | None
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    used_by: str | None


def _hash_token(token: str) -> str:
    # surrogatepass: a forged token holding a lone surrogate matches nothing instead of failing
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _user_info(user: m.User) -> UserInfo:
    return UserInfo(user.id, user.username, user.role)


def _retryable(error: Exception) -> bool:
    """Whether a failed write lost a race and may simply be run again."""
    if isinstance(error, IntegrityError):
        return True  # a concurrent writer took the unique slot first; the retry sees what it wrote
    code = getattr(error.orig, "sqlstate", None)
    return code in ("40001", "40P01", "55P03") or "database is locked" in str(error.orig)


def _active_assignments(item_id) -> Any:
    """How many annotators an item is assigned to and still counts: open or done assignments (not
    skipped or revoked) held by annotators not excluded from the project (their slots go to someone else)."""
    return (
        select(func.count(m.Assignment.id))
        .join(
            m.Membership,
            and_(m.Membership.project_id == m.Assignment.project_id, m.Membership.user_id == m.Assignment.user_id),
        )
        .where(
            m.Assignment.item_id == item_id,
            m.Assignment.status.in_(m.HOLDS_A_SLOT),
            m.Membership.excluded.is_(False),
        )
        .scalar_subquery()
    )


def _assigned_to(user_id: int) -> Any:
    """Whether the item in the enclosing query was ever assigned to ``user_id`` (open, done or skipped)."""
    return exists().where(m.Assignment.item_id == m.Item.id, m.Assignment.user_id == user_id)


# ---- the hot path's statements (the labelling page, a submission, the session lookup), built once
# with their values as bound parameters: building a statement costs more CPU than running it on SQLite.
PROJECT_ID, USER_ID, OVERLAP = bindparam("project_id"), bindparam("user_id"), bindparam("overlap")


@functools.cache
def _member_statement(lock: bool) -> Any:
    """A project (by id), the user's membership of it and its number of items (see Store._member_row)."""
    num_items = select(func.count(m.Item.id)).where(m.Item.project_id == m.Project.id).scalar_subquery()
    query = (
        select(m.Project, m.Membership, num_items)
        .join(m.Membership, and_(m.Membership.project_id == m.Project.id, m.Membership.user_id == USER_ID))
        .where(m.Project.id == PROJECT_ID)
    )
    return query.with_for_update(of=m.Membership) if lock else query


@functools.cache
def _open_assignment_statement() -> Any:
    return (
        select(m.Assignment, m.Item)
        .join(m.Item, m.Item.id == m.Assignment.item_id)
        .where(m.Assignment.project_id == PROJECT_ID, m.Assignment.user_id == USER_ID, m.Assignment.status == m.OPEN)
        .order_by(m.Assignment.id)
        .limit(1)
    )


def _labels_done() -> Any:
    return select(func.count(m.Label.id)).where(m.Label.project_id == PROJECT_ID, m.Label.user_id == USER_ID)


@functools.cache
def _labels_done_statement() -> Any:
    return _labels_done()


def _taken_items() -> Any:
    """The ids of the project's items the user cannot be given: ever assigned to them, or with every
    slot held (as :func:`_active_assignments` counts them), in one pass over the project's assignments."""
    holds = and_(m.Assignment.status.in_(m.HOLDS_A_SLOT), m.Membership.excluded.is_(False))
    return (
        select(m.Assignment.item_id)
        .outerjoin(
            m.Membership,
            and_(m.Membership.project_id == m.Assignment.project_id, m.Membership.user_id == m.Assignment.user_id),
        )
        .where(m.Assignment.project_id == PROJECT_ID)
        .group_by(m.Assignment.item_id)
        .having(
            or_(
                func.max(case((m.Assignment.user_id == USER_ID, 1), else_=0)) == 1,
                func.count(case((holds, 1))) >= OVERLAP,
            )
        )
    )


def _available_items(*columns: Any) -> Any:
    """``columns`` of the non-gold items of the project with a free slot that the user never had.

    ``NOT IN`` an uncorrelated subquery (item ids are never NULL): the database computes the taken
    items once per statement (PostgreSQL: a hashed subplan; SQLite: a temporary index) and probes
    it per item, whatever its statistics say. A subquery per item instead (a NOT EXISTS and a count)
    is a lookup per item at best, and on PostgreSQL, where the tables have no or stale statistics
    (a new project; autovacuum off or behind), the planner scans the whole assignments table for
    each item: cost quadratic in the project's size (issue 26)."""
    return select(*columns).where(
        m.Item.project_id == PROJECT_ID, m.Item.is_gold.is_(False), m.Item.id.not_in(_taken_items())
    )


@functools.cache
def _candidates_statement(per_item: bool) -> Any:
    """The non-gold items with a free slot that the user never had, in queue order (see _claim_item).
    ``per_item`` (SQLite): tested item by item in queue order, which stops at the first free one;
    SQLite's planner always does that with index lookups. Else (PostgreSQL) as :func:`_available_items`."""
    if not per_item:
        return _available_items(m.Item).order_by(m.Item.position).limit(1)
    return (
        select(m.Item)
        .where(
            m.Item.project_id == PROJECT_ID,
            m.Item.is_gold.is_(False),
            ~_assigned_to(USER_ID),
            _active_assignments(m.Item.id) < OVERLAP,
        )
        .order_by(m.Item.position)
        .limit(1)
    )


@functools.cache
def _holding_statement() -> Any:
    return select(_active_assignments(bindparam("item_id")))


@functools.cache
def _progress_statement(annotating: bool, qualifying: bool) -> Any:
    """The counts ``Store._progress`` needs, each a scalar subquery of one statement: labels done and
    open assignments; if ``annotating``, the gold and the non-gold items the user can still be given;
    if ``qualifying`` too, the qualification items left."""
    mine = (m.Assignment.project_id == PROJECT_ID, m.Assignment.user_id == USER_ID)
    counts = [_labels_done(), select(func.count(m.Assignment.id)).where(*mine, m.Assignment.status == m.OPEN)]
    if annotating:
        unassigned = (m.Item.project_id == PROJECT_ID, ~_assigned_to(USER_ID))
        gold = (m.Item.is_gold.is_(True), *([m.Item.is_qualification.is_(False)] if qualifying else []))
        counts.append(select(func.count(m.Item.id)).where(*unassigned, *gold))
        counts.append(_available_items(func.count(m.Item.id)))
        if qualifying:
            counts.append(select(func.count(m.Item.id)).where(*unassigned, m.Item.is_qualification.is_(True)))
    return select(*(c.scalar_subquery() for c in counts))


@functools.cache
def _submission_statement() -> Any:
    """The assignment a label answers, locked, with its item."""
    return (
        select(m.Assignment, m.Item)
        .join(m.Item, m.Item.id == m.Assignment.item_id)
        .where(m.Assignment.id == bindparam("assignment_id"))
        .with_for_update(of=m.Assignment)
    )


@functools.cache
def _label_by_key_statement() -> Any:
    return select(m.Label).where(m.Label.idempotency_key == bindparam("key"))


@functools.cache
def _new_assignment_statement() -> Any:
    table = m.Assignment.__table__
    return table.insert().returning(table.c.id)


@functools.cache
def _shown_order_statement() -> Any:
    table = m.Assignment.__table__
    return table.update().where(table.c.id == bindparam("assignment_id")).values(shown_order=bindparam("order"))


@functools.cache
def _new_label_statement() -> Any:
    table = m.Label.__table__
    return table.insert().returning(table.c.id)


@functools.cache
def _done_statement() -> Any:
    table = m.Assignment.__table__
    return table.update().where(table.c.id == bindparam("assignment_id")).values(status=m.DONE)


@functools.cache
def _session_statement() -> Any:
    return (
        select(m.User.id, m.User.username, m.User.role, m.Session.csrf_token)
        .join(m.Session, m.Session.user_id == m.User.id)
        .where(m.Session.token_hash == bindparam("token_hash"), m.Session.expires_at > bindparam("now"))
    )


def _gold_period(gold_rate: float) -> int:
    """Every how many tasks a gold item is given (0: never)."""
    return round(1 / gold_rate) if gold_rate > 0 else 0


def _scheduled_count(next_position: int, available: int, gold_left: int, period: int) -> int:
    """How many more tasks a user gets from ``next_position`` on, when the non-gold items run out
    after ``available`` and a gold item (while any is left) takes every ``period``-th position."""
    count, position = 0, next_position
    while True:
        if period and position % period == 0 and gold_left:
            gold_left -= 1
        elif available:
            available -= 1
        else:
            return count
        count, position = count + 1, position + 1


def _read_samples(source: str | os.PathLike) -> list[Samples]:
    """The Samples records of a file (as ``read_records`` reads them), its rows checked first for
    text no column can store: a one-line DataError naming the file, the line and the field."""
    name, rows = read_rows(source)
    for line, row in rows:
        found = first_unstorable(row)
        if found:
            raise DataError(name, line, found[0], found[1])
    return read_records(source, "samples")


def _open_and_owned(assignment, user: UserInfo, project_id: int | None) -> bool:
    """Whether ``assignment`` exists, is open, is ``user``'s, and (if given) is in ``project_id``."""
    return (
        assignment is not None
        and assignment.user_id == user.id
        and assignment.status == m.OPEN
        and (project_id is None or assignment.project_id == project_id)
    )


class Store:
    """The feedback app's data, behind one object. ``Store(url)`` connects and migrates the schema
    to the newest revision; ``url`` defaults to ``$RLHFLAB_DB`` or ``sqlite:///rlhflab-feedback.db``.

    ``password_hasher``: an ``argon2.PasswordHasher`` (the default parameters take ~0.1-0.3 s per
    hash, on purpose; tests pass a cheap one). Passwords hashed with other parameters still verify
    and are re-hashed with these at the next login.
    """

    def __init__(self, url: str | None = None, *, password_hasher: PasswordHasher | None = None):
        self.url = url or default_db_url()
        self.engine = make_engine(self.url)
        try:
            migrate(self.engine)
        except DatabaseError as e:
            if type(e) not in (OperationalError, DatabaseError):
                raise  # a bug (e.g. ProgrammingError), not an unreachable or unreadable database
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            raise ConfigError(f"cannot open database {where}: {str(e.orig).strip().splitlines()[0]}") from None
        self._writes = sessionmaker(self.engine, expire_on_commit=False)
        self._snapshots = sessionmaker(read_only(self.engine), expire_on_commit=False)
        self._single = single_statement(self.engine)
        self._hasher = password_hasher or PasswordHasher()
        # Verified against when a username is unknown, so a login takes as long either way.
        self._decoy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        """Close every pooled connection (a dropped test database needs none left open)."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transactions -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[DBSession]:
        """A write transaction: BEGIN IMMEDIATE on SQLite, READ COMMITTED with row locks on PostgreSQL.
        It commits before the block's result reaches the caller, so what the caller returns is durable."""
        with self._writes.begin() as session:
            yield session

    @contextlib.contextmanager
    def _read(self) -> Iterator[DBSession]:
        """A read transaction that sees one consistent snapshot (see :func:`rlhflab.app.db.read_only`)."""
        with self._snapshots.begin() as session:
            yield session

    def _write_retrying(self, work: Callable[[DBSession], T]) -> T:
        """Run ``work`` in a write transaction, again from the start if it lost a race (see _retryable)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._write() as session:
                    return work(session)
            except (IntegrityError, OperationalError) as error:
                if attempt == WRITE_ATTEMPTS - 1 or not _retryable(error):
                    raise
                time.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")

    # ---- lookups shared by the operations -----------------------------------------------------------
    @staticmethod
    def _naming(project: int | str) -> Any:
        """The condition selecting the project named by id or name; NotFound for what names none."""
        if isinstance(project, bool) or not isinstance(project, (int, str)):
            raise NotFound(f"no project {project!r}")
        if isinstance(project, int):
            check_id(project, "project")
        elif unstorable_text(project):
            raise NotFound(f"no project {ascii(project)}")
        return (m.Project.id if isinstance(project, int) else m.Project.name) == project

    @staticmethod
    def _project_row(session: DBSession, project: int | str) -> m.Project:
        row = session.scalars(select(m.Project).where(Store._naming(project))).first()
        if row is None:
            raise NotFound(f"no project {project!r}")
        return row

    @staticmethod
    def _membership(session: DBSession, project_id: int, user_id: int, lock: bool = False) -> m.Membership | None:
        query = select(m.Membership).where(m.Membership.project_id == project_id, m.Membership.user_id == user_id)
        return session.scalars(query.with_for_update() if lock else query).first()

    def _member_row(
        self, session: DBSession, project: int | str, user: UserInfo, lock: bool, missing: StoreError
    ) -> tuple[m.Project, m.Membership, int]:
        """The project, ``user``'s membership of it (locked, with ``lock``) and its number of items, in
        one statement: the hot path of the labelling page and of a submission. A user who is not a
        member gets NotFound, as from ``_visible_project``; an admin who is not one gets ``missing``."""
        self._naming(project)  # NotFound for what names no project
        if isinstance(project, int):
            row = session.execute(_member_statement(lock), {"project_id": project, "user_id": user.id}).first()
        else:  # by name: not the hot path
            project_id = session.scalar(select(m.Project.id).where(m.Project.name == project))
            params = {"project_id": project_id, "user_id": user.id}
            row = None if project_id is None else session.execute(_member_statement(lock), params).first()
        if row is None:
            self._visible_project(session, project, user)  # NotFound unless an admin
            raise missing
        return tuple(row)

    def _visible_project(
        self, session: DBSession, project: int | str, user: UserInfo | None, *roles: str
    ) -> tuple[m.Project, m.Membership | None]:
        """The project if ``user`` may see it (and, given ``roles``, act in it with one of them).

        ``user=None`` is the operator at the command line, who may do anything. An admin sees every
        project; anyone else only those they are a member of (else NotFound), and may act only in
        the membership roles listed (else Forbidden).
        """
        row = self._project_row(session, project)
        if user is None:
            return row, None
        membership = self._membership(session, row.id, user.id)
        if user.role == "admin":
            return row, membership
        if membership is None:
            raise NotFound(f"no project {project!r}")
        if roles and membership.role not in roles:
            raise Forbidden(f"{membership.role}s may not do this in project '{row.name}'")
        return row, membership

    @staticmethod
    def _require_admin(user: UserInfo | None, what: str) -> None:
        if user is not None and user.role != "admin":
            raise Forbidden(f"only an admin may {what}")

    @staticmethod
    def _project_info(session: DBSession, project: m.Project, num_items: int | None = None) -> ProjectInfo:
        if num_items is None:
            num_items = session.scalar(select(func.count(m.Item.id)).where(m.Item.project_id == project.id))
        return ProjectInfo(
            id=project.id,
            name=project.name,
            task=project.task,
            attributes=list(project.attributes),
            overlap=project.overlap,
            gold_rate=project.gold_rate,
            qualification_items=project.qualification_items,
            qualification_threshold=project.qualification_threshold,
            instructions=project.instructions,
            num_items=num_items,
            created_at=project.created_at,
        )

    # ---- people -----------------------------------------------------------------------------------
    def _check_new_user(self, username: str, password: str, role: str) -> None:
        if not isinstance(username, str) or not USERNAME.fullmatch(username):
            raise StoreError(
                f"invalid username {username!r}: 1-64 letters, digits or _.@- (starting with a letter or digit)"
            )
        if role not in ROLES:
            raise StoreError(f"unknown role '{role}'; choose from {', '.join(ROLES)}")
        if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
            raise StoreError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        check_text(password, "the password")

    def create_user(self, username: str, password: str, role: str) -> UserInfo:
        """A new user with an Argon2 password hash. StoreError if the name is taken or invalid."""
        self._check_new_user(username, password, role)
        password_hash = self._hasher.hash(password)  # slow on purpose: outside the transaction
        try:
            with self._write() as session:
                user = m.User(username=username, password_hash=password_hash, role=role)
                session.add(user)
                session.flush()
                return _user_info(user)
        except IntegrityError:
            raise StoreError(f"user '{username}' already exists") from None

    def authenticate(self, username: str, password: str, address: str | None = None) -> UserInfo | None:
        """The user if the password is theirs, else None (the same answer, in the same time, for an
        unknown username). ``address``: the client's, for throttling (None at the command line).

        TooManyLogins, before any password is checked, after too many failures within LOGIN_WINDOW
        for the account or from the address (a right password is refused then too, or guessing would
        go on). A failure is recorded; a success forgets the account's failures. The check and the
        record are separate transactions, so a burst of parallel guesses may pass the limit by the
        number in flight: throttling bounds the rate of guessing, it is not an exact count."""
        if unstorable_text(username) or unstorable_text(password):
            return None  # no account has such a name or password (the web app refuses them with 422)
        account = username[:64]  # as the failures table keeps it (no real username is longer)
        self._refuse_if_throttled(account, address)
        with self._read() as session:
            user = session.scalars(select(m.User).where(m.User.username == username)).first()
        try:
            self._hasher.verify(user.password_hash if user else self._decoy_hash, password)
        except (VerificationError, InvalidHashError):
            self._record_login_failure(account, address)
            return None
        if user is None:
            self._record_login_failure(account, address)
            return None
        with self._write() as session:
            session.execute(delete(m.LoginFailure).where(m.LoginFailure.username == account))
            if self._hasher.check_needs_rehash(user.password_hash):
                new_hash = self._hasher.hash(password)
                session.execute(update(m.User).where(m.User.id == user.id).values(password_hash=new_hash))
        return _user_info(user)

    def _refuse_if_throttled(self, username: str, address: str | None) -> None:
        """TooManyLogins if the account, or the address, has its limit of recent failures; its
        ``retry_after`` is when the oldest failure that counts leaves the window."""
        now = m.utcnow()
        limits = [(m.LoginFailure.username == username, MAX_FAILURES_PER_ACCOUNT)]
        if address is not None:
            limits.append((m.LoginFailure.address == address, MAX_FAILURES_PER_ADDRESS))
        with self._read() as session:
            for who, limit in limits:
                recent = session.scalars(
                    select(m.LoginFailure.at)
                    .where(who, m.LoginFailure.at > now - LOGIN_WINDOW)
                    .order_by(m.LoginFailure.at.desc())
                    .offset(limit - 1)
                    .limit(1)
                ).first()
                if recent is not None:
                    raise TooManyLogins(max(1, math.ceil((recent + LOGIN_WINDOW - now).total_seconds())))

    def _record_login_failure(self, username: str, address: str | None) -> None:
        now = m.utcnow()
        with self._write() as session:
            session.execute(delete(m.LoginFailure).where(m.LoginFailure.at <= now - LOGIN_WINDOW))
            session.add(m.LoginFailure(username=username, address=None if address is None else address[:64], at=now))

    def users(self, user: UserInfo | None = None) -> list[UserInfo]:
        """Every user, by name (admins only, when ``user`` is given)."""
        self._require_admin(user, "list users")
        with self._read() as session:
            return [_user_info(u) for u in session.scalars(select(m.User).order_by(m.User.username))]

    def create_invitation(
        self, role: str, created_by: int | None, projects: Sequence[str] = (), ttl_hours: float = 72
    ) -> str:
        """A single-use invitation token (put it in a link ``/invite/TOKEN``). Whoever accepts it
        joins with ``role`` and becomes a member of ``projects``. Only its hash is stored.
        ``created_by`` is None for an invitation made at the command line."""
        if role not in ROLES:
            raise StoreError(f"unknown role '{role}'; choose from {', '.join(ROLES)}")
        if isinstance(ttl_hours, bool) or not isinstance(ttl_hours, (int, float)) or not ttl_hours > 0:
            raise StoreError("an invitation needs a positive lifetime (ttl_hours)")
        if not ttl_hours <= MAX_INVITATION_HOURS:  # also refuses inf and nan
            raise StoreError(f"an invitation lives at most {MAX_INVITATION_HOURS} hours (a year), not {ttl_hours}")
        token = secrets.token_urlsafe(32)
        now = m.utcnow()
        with self._write() as session:
            names = [self._project_row(session, name).name for name in projects]
            session.add(
                m.Invitation(
                    token_hash=_hash_token(token),
                    role=role,
                    projects=names,
                    created_by=created_by,
                    created_at=now,
                    expires_at=now + dt.timedelta(hours=ttl_hours),
                )
            )
        return token

    def invitation(self, token: str) -> dict | None:
        """``{"role", "projects"}`` of a valid, unused, unexpired invitation; None otherwise."""
        with self._read() as session:
            row = session.scalars(select(m.Invitation).where(m.Invitation.token_hash == _hash_token(token))).first()
        if row is None or row.used_at is not None or row.expires_at <= m.utcnow():
            return None
        return {"role": row.role, "projects": list(row.projects)}

    def invitations(self, user: UserInfo | None = None) -> list[InvitationInfo]:
        """Every invitation, newest first (admins only, when ``user`` is given). Tokens cannot be
        shown again: only their hashes are kept."""
        self._require_admin(user, "list invitations")
        with self._read() as session:
            names = dict(session.execute(select(m.User.id, m.User.username)).all())
            rows = session.scalars(select(m.Invitation).order_by(m.Invitation.id.desc())).all()
        return [
            InvitationInfo(
                r.id, r.role, list(r.projects), names.get(r.created_by), r.created_at, r.expires_at, r.used_at,
                names.get(r.used_by),
            )
            for r in rows
        ]  # fmt: skip

    def accept_invitation(self, token: str, username: str, password: str) -> UserInfo:
        """Create the invited user and their memberships, and use up the invitation, in one
        transaction: of two people accepting one link at once, exactly one succeeds."""
        self._check_new_user(username, password, "annotator")
        password_hash = self._hasher.hash(password)
        now = m.utcnow()
        try:
            with self._write() as session:
                invitation = session.scalars(
                    select(m.Invitation).where(m.Invitation.token_hash == _hash_token(token))
                ).first()
                if invitation is None:
                    raise NotFound("no such invitation")
                if invitation.expires_at <= now:
                    raise StoreError("this invitation has expired; ask for a new one")
                claimed = session.execute(
                    update(m.Invitation)
                    .where(m.Invitation.id == invitation.id, m.Invitation.used_at.is_(None))
                    .values(used_at=now)
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount != 1:
                    raise StoreError("this invitation has already been used")
                user = m.User(username=username, password_hash=password_hash, role=invitation.role)
                session.add(user)
                session.flush()
                session.execute(update(m.Invitation).where(m.Invitation.id == invitation.id).values(used_by=user.id))
                if invitation.role != "admin":
                    for name in invitation.projects:
                        project = session.scalars(select(m.Project).where(m.Project.name == name)).first()
                        if project is not None:  # a project deleted since the invitation was made
                            self._join(session, project, user.id, invitation.role)
                return _user_info(user)
        except IntegrityError:
            raise StoreError(f"user '{username}' already exists; choose another name") from None

    def create_session(self, user_id: int, ttl_hours: float = SESSION_HOURS) -> tuple[str, str]:
        """A login session: ``(session token, CSRF token)``. The cookie carries the session token,
        of which only the SHA-256 hash is stored; forms and scripts carry the CSRF token."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = m.utcnow()
        with self._write() as session:
            if session.get(m.User, user_id) is None:
                raise NotFound(f"no user {user_id}")
            session.execute(delete(m.Session).where(m.Session.user_id == user_id, m.Session.expires_at <= now))
            session.add(
                m.Session(
                    token_hash=_hash_token(token),
                    user_id=user_id,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + dt.timedelta(hours=ttl_hours),
                )
            )
        return token, csrf

    def session_user(self, token: str) -> tuple[UserInfo, str] | None:
        """``(user, CSRF token)`` of a live session; None for an unknown or expired token."""
        if not token:
            return None
        with self._single.connect() as connection:  # every request asks: one statement, no ORM
            row = connection.execute(
                _session_statement(), {"token_hash": _hash_token(token), "now": m.utcnow()}
            ).first()
        return None if row is None else (UserInfo(row[0], row[1], row[2]), row[3])

    def end_session(self, token: str) -> None:
        with self._write() as session:
            session.execute(delete(m.Session).where(m.Session.token_hash == _hash_token(token)))

    # ---- projects ---------------------------------------------------------------------------------
    def create_project(
        self,
        name: str,
        task: str,
        samples: str | os.PathLike | Sequence[Samples] | None,
        *,
        attributes: Sequence[str] = (),
        overlap: int = 3,
        gold: str | os.PathLike | None = None,
        instructions: str = "",
        gold_rate: float = 0.1,
        qualification_items: int = 0,
        qualification_threshold: float = 0.7,
        seed: int = 0,
    ) -> ProjectInfo:
        """A project of ``task`` over the items made from ``samples`` (a file written by ``rlhflab
        sample``, or Samples records; None for a live project, which starts with no sampled items: see
        rlhflab.app.live), plus the gold items of ``gold`` (see tasks.read_gold).

        ``overlap``: distinct annotators per non-gold item. ``gold_rate``: the share of an
        annotator's tasks that are gold items (every round(1/gold_rate)-th). ``qualification_items``:
        the first that many gold items an annotator must label before any other work, agreeing with
        their answers on at least ``qualification_threshold`` of them (Section 7.3.3: annotators
        screened by agreement with experts). Malformed files raise a one-line DataError; a taken
        name or an invalid option a StoreError.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_PROJECT_NAME:
            raise StoreError(f"a project needs a name of 1-{MAX_PROJECT_NAME} characters")
        check_text(name, "the project name")
        check_text(instructions or "", "the instructions text")
        if task not in TASKS:
            raise StoreError(f"unknown task '{task}'; choose from {', '.join(TASKS)}")
        attributes = list(attributes)
        if attributes and task != "rating":
            raise StoreError(f"attributes apply to rating projects only, not {task}")
        if task == "rating":
            attributes = attributes or list(DEFAULT_ATTRIBUTES)
            bad = [a for a in attributes if not ATTRIBUTE.fullmatch(a)]
            if bad:
                raise StoreError(f"invalid attribute {bad[0]!r}: a letter, then letters, digits, _ or -")
            if len(set(attributes)) != len(attributes):
                raise StoreError(f"attributes repeat a name: {', '.join(attributes)}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
            raise StoreError(f"overlap must be a positive integer, got {overlap!r}")
        if not (isinstance(gold_rate, (int, float)) and 0 <= gold_rate <= 1):
            raise StoreError(f"gold_rate must be between 0 and 1, got {gold_rate!r}")
        if not (isinstance(qualification_threshold, (int, float)) and 0 <= qualification_threshold <= 1):
            raise StoreError(f"qualification_threshold must be between 0 and 1, got {qualification_threshold!r}")
        if isinstance(qualification_items, bool) or not isinstance(qualification_items, int) or qualification_items < 0:
            raise StoreError(f"qualification_items must be a non-negative integer, got {qualification_items!r}")

        records = _read_samples(samples) if isinstance(samples, (str, os.PathLike)) else list(samples or [])
        items = items_from_samples(task, records)
        for i, (prompt, completions) in enumerate(items):
            found = first_unstorable({"prompt": prompt, "completions": completions})
            if found:  # Samples records given directly (a file's rows were checked line by line)
                raise StoreError(f"<samples>: item {i + 1}: field '{found[0]}' {found[1]}")
        if not items and samples is not None:
            source = samples if isinstance(samples, (str, os.PathLike)) else "<samples>"
            need = "2 distinct non-empty completions" if task in ("pairwise", "ranking") else "a non-empty completion"
            raise StoreError(f"{source}: no record has {need}, so there is nothing to label")
        gold_items = read_gold(gold, task, attributes) if gold is not None else []
        if qualification_items > len(gold_items):
            raise StoreError(
                f"qualification_items={qualification_items} needs that many gold items, "
                f"but {len(gold_items)} were given (--gold)"
            )

        try:
            with self._write() as session:
                if session.scalars(select(m.Project.id).where(m.Project.name == name)).first() is not None:
                    raise StoreError(f"project '{name}' already exists")
                project = m.Project(
                    name=name,
                    task=task,
                    attributes=attributes,
                    overlap=overlap,
                    gold_rate=float(gold_rate),
                    qualification_items=qualification_items,
                    qualification_threshold=float(qualification_threshold),
                    instructions=instructions or "",
                    seed=seed,
                )
                session.add(project)
                session.flush()
                rows = [
                    {"prompt": p, "completions": c, "is_gold": False, "gold_answer": None, "is_qualification": False}
                    for p, c in items
                ] + [
                    {"prompt": p, "completions": c, "is_gold": True, "gold_answer": a, "is_qualification": i < qualification_items}
                    for i, (p, c, a) in enumerate(gold_items)
                ]  # fmt: skip
                session.add_all(m.Item(project_id=project.id, position=n, **row) for n, row in enumerate(rows, 1))
                session.flush()
                return self._project_info(session, project)
        except IntegrityError:
            raise StoreError(f"project '{name}' already exists") from None

    def project(self, name_or_id: int | str, user: UserInfo | None = None) -> ProjectInfo:
        """A project by id or name. NotFound if ``user`` is not a member (an admin sees every project)."""
        with self._read() as session:
            project, _ = self._visible_project(session, name_or_id, user)
            return self._project_info(session, project)

    def projects_for(self, user: UserInfo) -> list[ProjectInfo]:
        """The projects ``user`` sees, oldest first: every project for an admin, else their memberships."""
        with self._read() as session:
            query = select(m.Project).order_by(m.Project.id)
            if user.role != "admin":
                query = query.join(m.Membership, m.Membership.project_id == m.Project.id).where(
                    m.Membership.user_id == user.id
                )
            return [self._project_info(session, p) for p in session.scalars(query)]

    @staticmethod
    def _join(session: DBSession, project: m.Project, user_id: int, role: str) -> None:
        membership = Store._membership(session, project.id, user_id)
        if membership is None:
            qualification = m.IN_PROGRESS if role == "annotator" and project.qualification_items else m.NOT_REQUIRED
            session.add(m.Membership(project_id=project.id, user_id=user_id, role=role, qualification=qualification))
        elif membership.role != role:
            membership.role = role
            if role == "annotator" and project.qualification_items and membership.qualification == m.NOT_REQUIRED:
                membership.qualification = m.IN_PROGRESS

    def add_members(
        self, project: int | str, usernames: Sequence[str], role: str = "annotator", user: UserInfo | None = None
    ) -> None:
        """Make users members of a project as annotators or reviewers (an existing member takes the
        new role). Unknown usernames raise NotFound naming the first; nothing is added then."""
        if role not in ("annotator", "reviewer"):
            raise StoreError(f"a project member is an annotator or a reviewer, not '{role}'")
        self._require_admin(user, "add project members")

        def add(session: DBSession) -> None:
            row = self._project_row(session, project)
            for username in usernames:
                member = session.scalars(select(m.User).where(m.User.username == username)).first()
                if member is None:
                    raise NotFound(f"no user '{username}'")
                self._join(session, row, member.id, role)

        self._write_retrying(add)

    # ---- instructions -----------------------------------------------------------------------------
    def _own_membership(self, session: DBSession, project_id: int, user_id: int) -> m.Membership | None:
        """The user's membership; None for an admin who is not a member; NotFound for anyone else."""
        self._project_row(session, project_id)
        membership = self._membership(session, project_id, user_id)
        if membership is None:
            user = session.get(m.User, user_id)
            if user is None or user.role != "admin":
                raise NotFound(f"no project {project_id!r}")
        return membership

    def instructions_seen(self, project_id: int, user_id: int) -> bool:
        """Whether the user has read the project's instructions (Section 7.3.3: clear instructions
        come first); always True for an admin who is not a member."""
        with self._read() as session:
            membership = self._own_membership(session, project_id, user_id)
            return membership is None or membership.instructions_seen_at is not None

    def mark_instructions_seen(self, project_id: int, user_id: int) -> None:
        with self._write() as session:
            membership = self._own_membership(session, project_id, user_id)
            if membership is not None and membership.instructions_seen_at is None:
                membership.instructions_seen_at = m.utcnow()

    def qualification_status(self, project_id: int, user_id: int) -> str:
        """``not_required``, ``in_progress``, ``qualified`` or ``failed``."""
        with self._read() as session:
            membership = self._own_membership(session, project_id, user_id)
            return m.NOT_REQUIRED if membership is None else membership.qualification

    # ---- the labelling queue ----------------------------------------------------------------------
    def _progress(self, session: DBSession, project: m.Project, membership: m.Membership | None) -> tuple[int, int]:
        """(labels done, items this annotator can be given in all, as things stand now), counted by
        one statement (each count a scalar subquery: one round trip to the database, not five)."""
        if membership is None:
            return 0, 0
        annotating = not (membership.role != "annotator" or membership.excluded or membership.qualification == m.FAILED)
        qualifying = annotating and membership.qualification == m.IN_PROGRESS
        params = {"project_id": project.id, "user_id": membership.user_id, "overlap": project.overlap}
        counts = session.execute(_progress_statement(annotating, qualifying), params).one()
        if not annotating:
            done, open_now = counts
            return done, done + open_now
        done, open_now, gold_left, available, *qualification_left = counts
        ahead = open_now + sum(qualification_left)
        later = _scheduled_count(done + ahead + 1, available, gold_left, _gold_period(project.gold_rate))
        return done, done + ahead + later

    def _task(self, session: DBSession, project: m.Project, membership, assignment_id: int, shown_order, item) -> Task:
        done, total = self._progress(session, project, membership)
        return Task(
            assignment_id=assignment_id,
            item_id=item.id,
            project_id=project.id,
            prompt=item.prompt,
            completions=[item.completions[i] for i in shown_order],
            shown_order=list(shown_order),
            is_gold=item.is_gold,
            is_qualification=item.is_qualification,
            position=done + 1,
            total=total,
        )

    def _claim_item(self, session: DBSession, project: m.Project, user_id: int) -> m.Item | None:
        """The first non-gold item with a free slot that ``user_id`` never had, locked for this
        transaction. On PostgreSQL rows other annotators are claiming right now are skipped (SKIP
        LOCKED); only when every candidate is being claimed does it wait for one. Once the lock is
        held the item's count is read again, by a statement that sees every claim committed before."""
        sqlite = session.bind.dialect.name == "sqlite"
        candidates = _candidates_statement(per_item=sqlite)
        params = {"project_id": project.id, "user_id": user_id, "overlap": project.overlap}
        if sqlite:
            return session.scalars(candidates, params).first()  # BEGIN IMMEDIATE: no other writer until commit
        passed_over: list[int] = []
        while True:
            query = candidates.where(m.Item.id.not_in(passed_over)) if passed_over else candidates
            item = session.scalars(query.with_for_update(of=m.Item, skip_locked=True), params).first()
            if item is None:
                item = session.scalars(query.with_for_update(of=m.Item), params).first()
            if item is None:
                return None
            count = session.scalar(_holding_statement(), {"item_id": item.id})
            if count < project.overlap:
                return item
            passed_over.append(item.id)

    def _next_item(self, session: DBSession, project: m.Project, membership: m.Membership) -> m.Item | None:
        user_id = membership.user_id
        unassigned = select(m.Item).where(m.Item.project_id == project.id, ~_assigned_to(user_id))
        if membership.qualification == m.IN_PROGRESS:
            query = unassigned.where(m.Item.is_qualification.is_(True)).order_by(m.Item.position).limit(1)
            return session.scalars(query).first()
        position = 1 + session.scalar(_labels_done_statement(), {"project_id": project.id, "user_id": user_id})
        period = _gold_period(project.gold_rate)
        if period and position % period == 0:
            gold = session.scalars(unassigned.where(m.Item.is_gold.is_(True)).order_by(m.Item.position).limit(1))
            item = gold.first()
            if item is not None:
                return item
        return self._claim_item(session, project, user_id)

    def next_task(self, project_id: int, user: UserInfo) -> Task | None:
        """The task to show ``user`` now, or None when there is none (all done, or qualification failed).

        In this order: the user's open assignment (a reload resumes it); while qualifying, the next
        qualification item; a gold item at every round(1/gold_rate)-th position (if one is left);
        else a non-gold item with a free slot that this user never had. A new assignment records a
        random order to show the completions in, seeded by the project's seed and the assignment id.
        Only project members who annotate get tasks (NotFound for non-members, Forbidden for others).
        """
        return self.task_page(project_id, user, unread_stops=False).task

    def task_page(self, project_id: int, user: UserInfo, *, unread_stops: bool = True) -> TaskPage:
        """Everything the labelling page shows, in one write transaction: the project, whether the
        user has read its instructions, the task of :meth:`next_task` (none is handed out while the
        instructions are unread, with ``unread_stops``), the progress and the qualification status."""

        def work(session: DBSession) -> TaskPage:
            # Locking the membership serialises one annotator's concurrent requests (two tabs), so
            # they never hold two open assignments.
            missing = Forbidden(f"'{user.username}' is not an annotator of project {project_id!r}")
            project, membership, num_items = self._member_row(session, project_id, user, lock=True, missing=missing)
            info = self._project_info(session, project, num_items)
            seen = membership.instructions_seen_at is not None
            if unread_stops and not seen:
                return TaskPage(info, False, None, 0, 0, membership.qualification)
            if membership.role != "annotator":
                raise Forbidden(f"{membership.role}s may not do this in project '{project.name}'")
            task = self._assign(session, project, membership)
            done, total = (task.position - 1, task.total) if task else self._progress(session, project, membership)
            return TaskPage(info, seen, task, done, total, membership.qualification)

        return self._write_retrying(work)

    def _assign(self, session: DBSession, project: m.Project, membership: m.Membership) -> Task | None:
        """The annotator's open assignment, else a new one (see :meth:`next_task`); the membership is locked."""
        if membership.excluded:
            return None
        user_id = membership.user_id
        params = {"project_id": project.id, "user_id": user_id}
        current = session.execute(_open_assignment_statement(), params).first()
        if current is not None:
            assignment, item = current
            return self._task(session, project, membership, assignment.id, assignment.shown_order, item)
        if membership.qualification == m.FAILED:
            return None
        item = self._next_item(session, project, membership)
        if item is None:
            return None
        # Core statements, not the ORM's unit of work: the hot path (the id seeds the order)
        new = {"project_id": project.id, "item_id": item.id, "user_id": user_id, "shown_order": [], "status": m.OPEN}
        assignment_id = session.execute(_new_assignment_statement(), {**new, "created_at": m.utcnow()}).scalar_one()
        order = list(range(len(item.completions)))
        random.Random(derive_seed(project.seed, "shown_order", assignment_id)).shuffle(order)
        session.execute(_shown_order_statement(), {"assignment_id": assignment_id, "order": order})
        return self._task(session, project, membership, assignment_id, order, item)

    def _label_info(self, label: m.Label, duplicate: bool) -> LabelInfo:
        return LabelInfo(label.id, label.item_id, label.user_id, dict(label.value), label.created_at, duplicate)

    def submit_label(
        self,
        assignment_id: int,
        user: UserInfo,
        value: Any,
        idempotency_key: str,
        seconds: float | None,
        project_id: int | None = None,
    ) -> LabelInfo:
        """Store ``user``'s answer (displayed positions, as the page posts it) to their open assignment.

        The answer is validated (LabelError) and resolved to original indices before it is stored.
        ``value`` may be a function of the project's ProjectInfo that returns the answer (a page's form,
        read according to the project's task), with ``project_id``: the project is then read in the
        submission's one transaction instead of one of its own.
        A submission repeating an earlier one's ``idempotency_key`` returns the label that one stored
        (``duplicate=True``) and writes nothing. The label is committed before this returns. NotFound
        unless the assignment is the user's own and open (and in ``project_id``, when given: a page of
        one project cannot answer another's assignment).
        """
        check_id(assignment_id, "open assignment")
        if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise LabelError(f"an idempotency key is a string of 1-{MAX_IDEMPOTENCY_KEY} characters")
        if unstorable_text(idempotency_key):
            raise LabelError(f"field 'idempotency_key' {unstorable_text(idempotency_key)}")
        if callable(value) and project_id is None:
            raise TypeError("a label read from a form (a callable value) needs the project_id it was posted to")
        unstorable = None if callable(value) else first_unstorable(value)
        if unstorable:
            raise LabelError(f"field 'value.{unstorable[0]}' {unstorable[1]}")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
                raise LabelError(f"seconds must be a number, got {seconds!r}")
            if seconds < 0:
                raise LabelError(f"seconds must not be negative, got {seconds!r}")

        def store(session: DBSession) -> LabelInfo:
            answer, project, membership = value, None, None
            if project_id is not None:
                missing = NotFound(f"no open assignment {assignment_id}")
                project, membership, num_items = self._member_row(session, project_id, user, False, missing)
                if callable(value):  # the form read with the project's task (LabelError)
                    answer = value(self._project_info(session, project, num_items))
                    unstorable = first_unstorable(answer)
                    if unstorable:
                        raise LabelError(f"field 'value.{unstorable[0]}' {unstorable[1]}")
            # Lock the assignment first: a concurrent submission for it then finishes before this one
            # looks for its key, and finds the label that one stored.
            found = session.execute(_submission_statement(), {"assignment_id": assignment_id}).first()
            assignment, item = found or (None, None)
            earlier = session.scalars(_label_by_key_statement(), {"key": idempotency_key}).first()
            if earlier is not None:
                if earlier.user_id != user.id or (project_id is not None and earlier.project_id != project_id):
                    raise NotFound(f"no open assignment {assignment_id}")
                return self._label_info(earlier, duplicate=True)
            if not _open_and_owned(assignment, user, project_id):
                raise NotFound(f"no open assignment {assignment_id}")
            if project is None:
                # Exclusion revokes open assignments; this holds should one be opened in a race with it.
                membership = self._membership(session, assignment.project_id, user.id)
                project = session.get(m.Project, assignment.project_id)
            if membership is None or membership.excluded:
                raise NotFound(f"no open assignment {assignment_id}")
            size = answer_size(project.task, item.prompt, item.completions)  # k, or a turns item's assistant turns
            shown = validate_label(project.task, project.attributes, size, answer)
            label = {
                "project_id": project.id,
                "item_id": item.id,
                "user_id": user.id,
                "assignment_id": assignment.id,
                "idempotency_key": idempotency_key,
                "value": resolve_label(project.task, shown, assignment.shown_order),
                "seconds": None if seconds is None else float(seconds),
                "is_gold": item.is_gold,
                "created_at": m.utcnow(),
            }
            # Core statements, not the ORM's unit of work: the hot path
            label_id = session.execute(_new_label_statement(), label).scalar_one()
            session.execute(_done_statement(), {"assignment_id": assignment.id})
            if item.is_qualification:
                self._update_qualification(session, project, user.id)
            return LabelInfo(label_id, item.id, user.id, dict(label["value"]), label["created_at"], duplicate=False)

        return self._write_retrying(store)

    @staticmethod
    def _update_qualification(session: DBSession, project: m.Project, user_id: int) -> None:
        """Once every qualification item is labelled, pass or fail the annotator on their agreement
        with the gold answers (Section 7.3.3, expert-annotator agreement)."""
        membership = Store._membership(session, project.id, user_id, lock=True)
        if membership is None or membership.qualification != m.IN_PROGRESS:
            return
        answered = session.execute(
            select(m.Item.gold_answer, m.Label.value)
            .join(m.Label, m.Label.item_id == m.Item.id)
            .where(m.Item.project_id == project.id, m.Item.is_qualification.is_(True), m.Label.user_id == user_id)
        ).all()
        required = session.scalar(
            select(func.count(m.Item.id)).where(m.Item.project_id == project.id, m.Item.is_qualification.is_(True))
        )
        if len(answered) < required:
            return
        agreed = sum(gold_agrees(project.task, gold, value) for gold, value in answered)
        passed = agreed >= project.qualification_threshold * len(answered)
        membership.qualification = m.QUALIFIED if passed else m.FAILED

    def skip(self, assignment_id: int, user: UserInfo, project_id: int | None = None) -> None:
        """Give an open assignment back: the slot goes to another annotator, and this user is never
        offered the item again. Qualification items cannot be skipped (StoreError)."""
        check_id(assignment_id, "open assignment")

        def give_back(session: DBSession) -> None:
            assignment = session.scalars(
                select(m.Assignment).where(m.Assignment.id == assignment_id).with_for_update()
            ).first()
            if not _open_and_owned(assignment, user, project_id):
                raise NotFound(f"no open assignment {assignment_id}")
            if session.get(m.Item, assignment.item_id).is_qualification:
                raise StoreError("qualification items cannot be skipped")
            assignment.status = m.SKIPPED

        self._write_retrying(give_back)

    def progress(self, project_id: int, user: UserInfo) -> tuple[int, int]:
        """(labels done, items this user can be given in all); (0, 0) for a member who does not annotate."""
        with self._read() as session:
            project, membership = self._visible_project(session, project_id, user)
            return self._progress(session, project, membership)

    # ---- queue order (active learning: rlhflab.feedback.acquisition) --------------------------------
    @staticmethod
    def _items_needing_labels(session: DBSession, project: m.Project, lock: bool = False) -> list[m.Item]:
        """Non-gold items that fewer than ``overlap`` annotators hold, in queue order: the items whose
        order decides what ``_claim_item`` hands out next."""
        query = (
            select(m.Item)
            .where(
                m.Item.project_id == project.id,
                m.Item.is_gold.is_(False),
                _active_assignments(m.Item.id) < project.overlap,
            )
            .order_by(m.Item.position)
        )
        return list(session.scalars(query.with_for_update(of=m.Item) if lock else query))

    def items_to_order(self, project: int | str, user: UserInfo | None = None) -> list[dict]:
        """The items that still need labels (non-gold, fewer than ``overlap`` annotators hold them), in
        the order they are handed out: ``{"item_id", "prompt", "completions"}``, to score for
        :meth:`reorder_items`. Admins only."""
        self._require_admin(user, "reorder a project's queue")
        with self._read() as session:
            row = self._project_row(session, project)
            items = self._items_needing_labels(session, row)
            return [{"item_id": i.id, "prompt": i.prompt, "completions": list(i.completions)} for i in items]

    def reorder_items(self, project: int | str, scores: dict[int, float], user: UserInfo | None = None) -> int:
        """Hand out the items that still need labels highest ``scores`` first (ties in their current
        order), then those without a score in their current order; returns how many items moved.

        Only the order among those items changes: they swap positions with one another, so gold and
        qualification items, items no annotator can be given any more, and every assignment stay as
        they are. Scores of items that filled up meanwhile are ignored. Admins only."""
        self._require_admin(user, "reorder a project's queue")
        if any(not math.isfinite(float(s)) for s in scores.values()):
            raise StoreError("every queue score must be a finite number")

        def reorder(session: DBSession) -> int:
            row = self._project_row(session, project)
            items = self._items_needing_labels(session, row, lock=True)
            scored = [i for i in items if i.id in scores]
            ranked = sorted(scored, key=lambda i: -float(scores[i.id])) + [i for i in items if i.id not in scores]
            positions = [i.position for i in items]  # ascending: the slots the reordered items share
            moves = [(item, new) for item, new in zip(ranked, positions) if item.position != new]
            # Through negative positions first, since (project, position) is unique at every statement.
            for item, new in moves:
                item.position = -new
            session.flush()
            for item, new in moves:
                item.position = new
            session.flush()
            return len(moves)

        return self._write_retrying(reorder)

    # ---- review -----------------------------------------------------------------------------------
    def disagreements(self, project_id: int, user: UserInfo, limit: int = 100) -> list[dict]:
        """Items whose labels disagree (tasks.labels_disagree), in item order, each with its labels:
        ``{"item_id", "position", "prompt", "completions", "is_gold", "gold_answer", "labels": [{"label_id",
        "annotator", "value", "excluded", "created_at"}]}``. Reviewers and admins only."""
        with self._read() as session:
            project, _ = self._visible_project(session, project_id, user, "reviewer")
            rows = session.execute(
                select(m.Item, m.Label, m.User.username, m.Membership.excluded, m.Assignment.status)
                .join(m.Label, m.Label.item_id == m.Item.id)
                .join(m.Assignment, m.Assignment.id == m.Label.assignment_id)
                .join(m.User, m.User.id == m.Label.user_id)
                .join(
                    m.Membership,
                    and_(m.Membership.project_id == m.Label.project_id, m.Membership.user_id == m.Label.user_id),
                )
                .where(m.Item.project_id == project.id)
                .order_by(m.Item.position, m.Label.id)
            ).all()
        by_item: dict[int, dict] = {}
        for item, label, username, excluded, status in rows:
            entry = by_item.setdefault(
                item.id,
                {
                    "item_id": item.id,
                    "position": item.position,
                    "prompt": item.prompt,
                    "completions": list(item.completions),
                    "is_gold": item.is_gold,
                    "gold_answer": item.gold_answer,
                    "labels": [],
                },
            )
            entry["labels"].append(
                {
                    "label_id": label.id,
                    "annotator": username,
                    "value": dict(label.value),
                    "excluded": excluded or status == m.REVOKED,
                    "created_at": label.created_at,
                }
            )
        disagreeing = [e for e in by_item.values() if labels_disagree(project.task, [x["value"] for x in e["labels"]])]
        return disagreeing[:limit]

    def set_gold(self, item_id: int, answer: Any, user: UserInfo | None, project_id: int | None = None) -> None:
        """Make an item gold with ``answer`` (original indices, as in a gold file; LabelError if it
        does not fit), or, with ``answer=None``, an ordinary item again, unless more annotators
        labelled it (as gold, everyone does) than the project's overlap. Reviewers and admins only;
        with ``project_id``, only an item of that project (NotFound for any other)."""
        check_id(item_id, "item")

        def mark(session: DBSession) -> None:
            item = session.scalars(select(m.Item).where(m.Item.id == item_id).with_for_update()).first()
            if item is None or (project_id is not None and item.project_id != project_id):
                raise NotFound(f"no item {item_id}")
            project, _ = self._visible_project(session, item.project_id, user, "reviewer")
            if answer is None:
                if item.is_qualification:
                    raise StoreError("a qualification item stays gold")
                holding = session.scalar(select(_active_assignments(item.id)))
                if item.is_gold and holding > project.overlap:
                    raise StoreError(
                        f"item {item.id} stays gold: {holding} annotators hold it, more than the overlap of {project.overlap}"
                    )
                item.is_gold, item.gold_answer = False, None
                return
            k = answer_size(project.task, item.prompt, item.completions)
            item.gold_answer = validate_gold(project.task, project.attributes, k, answer)
            item.is_gold = True

        self._write_retrying(mark)

    def set_excluded(self, project_id: int, username: str, excluded: bool, user: UserInfo | None) -> None:
        """Exclude an annotator from a project (or take them back). Admins only.

        Excluded: their labels are left out of exports, their slots go to other annotators, they get
        no more tasks, and their open assignments are revoked (a page opened before cannot be
        submitted). Taken back: their labels count again, except on items whose slot went to someone
        else meanwhile (those assignments are revoked, so no item counts more than ``overlap``)."""

        def mark(session: DBSession) -> None:
            project, _ = self._visible_project(session, project_id, user)
            self._require_admin(user, "exclude annotators")
            member = session.scalars(
                select(m.Membership)
                .join(m.User, m.User.id == m.Membership.user_id)
                .where(m.Membership.project_id == project.id, m.User.username == username)
                .with_for_update(of=m.Membership)
            ).first()
            if member is None:
                raise NotFound(f"'{username}' is not a member of project '{project.name}'")
            if bool(excluded) == member.excluded:
                return
            mine = (m.Assignment.project_id == project.id, m.Assignment.user_id == member.user_id)
            if excluded:
                session.execute(
                    update(m.Assignment).where(*mine, m.Assignment.status == m.OPEN).values(status=m.REVOKED)
                )
                member.excluded = True
                return
            self._revoke_refilled(session, project, member.user_id)
            member.excluded = False

        self._write_retrying(mark)

    @staticmethod
    def _revoke_refilled(session: DBSession, project: m.Project, user_id: int) -> None:
        """Revoke ``user_id``'s done assignments on the non-gold items whose ``overlap`` slots other
        annotators fill. The items are locked first (as ``_claim_item`` locks the item it assigns),
        so no assignment is being made to them while they are counted."""
        done = select(m.Assignment.item_id).where(
            m.Assignment.project_id == project.id, m.Assignment.user_id == user_id, m.Assignment.status == m.DONE
        )
        items = session.scalars(
            select(m.Item.id)
            .where(m.Item.id.in_(done), m.Item.is_gold.is_(False))
            .order_by(m.Item.id)
            .with_for_update()
        ).all()
        full = [item_id for item_id in items if session.scalar(select(_active_assignments(item_id))) >= project.overlap]
        if full:
            session.execute(
                update(m.Assignment)
                .where(m.Assignment.user_id == user_id, m.Assignment.item_id.in_(full))
                .values(status=m.REVOKED)
            )

    # ---- analysis ---------------------------------------------------------------------------------
    def _label_rows(
        self, session: DBSession, project: m.Project, include_excluded: bool, item_id: int | None = None
    ) -> list[dict]:
        query = (
            select(m.Label, m.Item, m.User.username, m.Membership.excluded, m.Assignment)
            .join(m.Item, m.Item.id == m.Label.item_id)
            .join(m.User, m.User.id == m.Label.user_id)
            .join(m.Assignment, m.Assignment.id == m.Label.assignment_id)
            .join(
                m.Membership,
                and_(m.Membership.project_id == m.Label.project_id, m.Membership.user_id == m.Label.user_id),
            )
            .where(m.Label.project_id == project.id)
            .order_by(m.Label.id)
        )
        if not include_excluded:
            query = query.where(m.Membership.excluded.is_(False), m.Assignment.status != m.REVOKED)
        if item_id is not None:
            query = query.where(m.Label.item_id == item_id)
        decisions = self._adjudications(session, project, item_id)
        return [
            {
                "label_id": label.id,
                "item_id": item.id,
                "project": project.name,
                "task": project.task,
                "annotator": username,
                "annotator_id": label.user_id,
                "prompt": item.prompt,
                "completions": list(item.completions),
                "value": dict(label.value),
                "shown_order": list(assignment.shown_order),
                "swapped": list(assignment.shown_order) != sorted(assignment.shown_order),
                "seconds": label.seconds,
                "created_at": label.created_at,
                "gold": item.is_gold,
                "gold_answer": item.gold_answer,
                "qualification": item.is_qualification,
                # a revoked assignment's label is left out as an excluded annotator's is
                "excluded": excluded or assignment.status == m.REVOKED,
                "attributes": list(project.attributes),
                "adjudication": decisions.get(item.id),
                "policy": item.policy,
            }
            for label, item, username, excluded, assignment in session.execute(query)
        ]

    @staticmethod
    def _adjudications(session: DBSession, project: m.Project, item_id: int | None = None) -> dict[int, dict]:
        """item id -> its adjudication ``{"value", "cause", "note", "reviewer", "reviewer_id",
        "label_ids", "decided_at"}``, for the project's (or the one item's) adjudicated items."""
        query = (
            select(m.Adjudication, m.User.username)
            .outerjoin(m.User, m.User.id == m.Adjudication.reviewer_id)
            .where(m.Adjudication.project_id == project.id)
        )
        if item_id is not None:
            query = query.where(m.Adjudication.item_id == item_id)
        return {
            row.item_id: {
                "value": dict(row.value),
                "cause": row.cause,
                "note": row.note,
                "reviewer": username,
                "reviewer_id": row.reviewer_id,
                "label_ids": list(row.label_ids),
                "decided_at": row.decided_at,
            }
            for row, username in session.execute(query)
        }

    # ---- adjudication -----------------------------------------------------------------------------
    def adjudication_queue(self, project_id: int, user: UserInfo | None = None) -> list[dict]:
        """The project's items that disagree or were adjudicated (rlhflab.app.adjudication's
        ``adjudication_items``: those with ``pending`` are the queue). Reviewers and admins only."""
        with self._read() as session:
            project, _ = self._visible_project(session, project_id, user, "reviewer")
            return adjudication_items(project.task, self._label_rows(session, project, include_excluded=True))

    def adjudicate(
        self, item_id: int, value: Any, cause: str, note: str, user: UserInfo | None, project_id: int | None = None
    ) -> dict:
        """Record the resolution of an item whose labels disagree: ``value`` the label it should have,
        as a page posts it with the completions shown in their original order (validated as a label
        is: LabelError), ``cause`` one of adjudication.CAUSES, ``note`` free text. Replaces an earlier
        decision. StoreError unless the item's counted labels disagree (see rlhflab.app.adjudication);
        NotFound for an item of another project than ``project_id``. Reviewers and admins only.
        Returns the item's adjudication as ``Store.label_rows`` rows carry it."""
        check_id(item_id, "item")
        cause, note = check_cause(cause, note)
        unstorable = first_unstorable(value)
        if unstorable:
            raise LabelError(f"field '{unstorable[0]}' {unstorable[1]}")

        def decide(session: DBSession) -> dict:
            item = session.scalars(select(m.Item).where(m.Item.id == item_id).with_for_update()).first()
            if item is None or (project_id is not None and item.project_id != project_id):
                raise NotFound(f"no item {item_id}")
            project, _ = self._visible_project(session, item.project_id, user, "reviewer")
            labels = counted_labels(self._label_rows(session, project, include_excluded=True, item_id=item.id))
            if item.is_gold or not needs_adjudication(project.task, labels.get(item.id, [])):
                raise StoreError(f"item {item.id} has no disagreeing labels to adjudicate")
            k = len(item.completions)
            size = answer_size(project.task, item.prompt, item.completions)  # k, or a turns item's assistant turns
            shown = validate_label(project.task, project.attributes, size, value)
            decision = session.scalars(select(m.Adjudication).where(m.Adjudication.item_id == item.id)).first()
            if decision is None:
                decision = m.Adjudication(project_id=project.id, item_id=item.id)
                session.add(decision)
            decision.reviewer_id = None if user is None else user.id
            decision.value = resolve_label(project.task, shown, list(range(k)))
            decision.cause, decision.note = cause, note
            decision.label_ids = sorted(row["label_id"] for row in labels[item.id])
            decision.decided_at = m.utcnow()
            session.flush()
            return self._adjudications(session, project, item.id)[item.id]

        return self._write_retrying(decide)

    def label_rows(
        self, project_id: int | str, include_excluded: bool = True, user: UserInfo | None = None
    ) -> list[dict]:
        """Every label of a project as a plain dict (the input of rlhflab.app.quality and of the
        export), read in one transaction. With ``user``: reviewers and admins only."""
        with self._read() as session:
            project, _ = self._visible_project(session, project_id, user, "reviewer")
            return self._label_rows(session, project, include_excluded)

    def export(
        self,
        project: int | str,
        kind: str,
        output: str | os.PathLike,
        include_excluded: bool = False,
        *,
        format: str | None = None,
        use_adjudicated: bool = False,
        user: UserInfo | None = None,
    ) -> dict:
        """Write a project's labels as rlhflab records (see rlhflab.app.export) and return the counts;
        with ``use_adjudicated``, an adjudicated item's resolution in place of its labels.

        The labels are read in one transaction, a consistent snapshot however many annotators are
        labelling meanwhile. With ``user``: admins only.
        """
        self._require_admin(user, "export labels")
        with self._read() as session:
            row, _ = self._visible_project(session, project, user)
            task, rows = row.task, self._label_rows(session, row, include_excluded=True)
        try:
            return export_rows(
                rows, kind, output, include_excluded, format=format, task=task, use_adjudicated=use_adjudicated
            )
        except (ExportError, ConfigError) as e:
            raise StoreError(str(e)) from None

    # ---- live projects (rlhflab.app.live) -----------------------------------------------------------
    def live_queue(self, project: int | str) -> tuple[int, set[str]]:
        """``(waiting, used)`` of a live project: how many of its non-gold items no annotator has been
        given yet (a skipped item waits no more: someone passed it over), and the prompts its items
        hold (as ``live.prompt_key`` strings), which are never sampled again."""
        with self._read() as session:
            row = self._project_row(session, project)
            never_assigned = ~exists().where(m.Assignment.item_id == m.Item.id)
            waiting = session.scalar(
                select(func.count(m.Item.id)).where(
                    m.Item.project_id == row.id, m.Item.is_gold.is_(False), never_assigned
                )
            )
            used = {prompt_key(p) for p in session.scalars(select(m.Item.prompt).where(m.Item.project_id == row.id))}
        return waiting, used

    def add_live_items(self, project: int | str, records: Sequence[Samples], policy: str) -> list[int]:
        """Append the items each of ``records`` makes (tasks.items_from_samples) to the end of the
        queue, each recording the ``policy`` that sampled it; returns how many items each record made:
        0 for one whose prompt an item of the project holds already (no prompt is used twice, whoever
        sampled it), or whose completions make no item or hold text no column can store.

        One transaction, with the project's row locked (PostgreSQL; SQLite's BEGIN IMMEDIATE runs one
        writer at a time), so two samplers on one database take turns and see each other's items."""
        check_text(policy, "the policy name")

        def add(session: DBSession) -> list[int]:
            row = self._project_row(session, project)
            session.scalars(select(m.Project.id).where(m.Project.id == row.id).with_for_update()).first()
            used = {prompt_key(p) for p in session.scalars(select(m.Item.prompt).where(m.Item.project_id == row.id))}
            position = session.scalar(select(func.max(m.Item.position)).where(m.Item.project_id == row.id)) or 0
            made = []
            for record in records:
                key = prompt_key(record.prompt)
                items = [] if key in used else items_from_samples(row.task, [record])
                items = [(p, c) for p, c in items if not first_unstorable({"prompt": p, "completions": c})]
                for prompt, completions in items:
                    position += 1
                    session.add(
                        m.Item(
                            project_id=row.id,
                            position=position,
                            prompt=prompt,
                            completions=completions,
                            is_gold=False,
                            gold_answer=None,
                            is_qualification=False,
                            policy=policy,
                        )
                    )
                if items:
                    used.add(key)
                made.append(len(items))
            session.flush()
            return made

        return self._write_retrying(add)
