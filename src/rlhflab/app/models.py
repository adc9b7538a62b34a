"""The feedback app's tables (SQLAlchemy 2 ORM). Only :mod:`rlhflab.app.store` uses them.

The invariants the app promises are in the schema, where no race can break them: one assignment
and one label per (item, annotator), one label per assignment, one label per idempotency key (a
retried submission finds the label its first attempt stored). Secrets are stored as SHA-256 hashes
(session and invitation tokens) or Argon2 hashes (passwords), never as they were issued.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Assignment states: open (shown, not yet labelled), done (labelled), skipped (given back; the
# annotator is never offered the item again, and the slot goes to someone else), revoked (taken
# back by an admin's action: the annotator's open assignments when they are excluded, and their done
# ones whose slot went to someone else meanwhile, when they are included again; a revoked
# assignment's label is left out like an excluded annotator's, so no item counts more than
# ``overlap`` labels).
OPEN, DONE, SKIPPED, REVOKED = "open", "done", "skipped", "revoked"
# Statuses whose assignment holds one of an item's ``overlap`` slots.
HOLDS_A_SLOT = (OPEN, DONE)
# Qualification states of a membership (Section 7.3.3: annotators screened by agreement with experts).
NOT_REQUIRED, IN_PROGRESS, QUALIFIED, FAILED = "not_required", "in_progress", "qualified", "failed"


# Ids are 64-bit wherever the database has the choice (BIGINT on PostgreSQL, migration 0002); on
# SQLite an id must be exactly INTEGER to be the rowid (and so to autoincrement), which is 64-bit.
ID = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1  # the largest value an id column holds, on either database


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """A point in time, always handed back as an aware UTC datetime. PostgreSQL stores it as
    ``timestamptz``; SQLite, which has no time zones, as naive UTC text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; use an aware datetime")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


# Constraint names fixed by rule, so the migrations name them the same way on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # admin | annotator | reviewer
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Invitation(Base):
    """A single-use link that lets a person choose a username and password and join with ``role``."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    projects: Mapped[list[Any]] = mapped_column(JSON)  # project names the new user joins
    created_by: Mapped[int | None] = mapped_column(ID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    used_by: Mapped[int | None] = mapped_column(ID, ForeignKey("users.id", ondelete="SET NULL"))


class Session(Base):
    """A server-side login session: the cookie holds the token, the table its hash."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ID, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    task: Mapped[str] = mapped_column(String(16))  # one of tasks.TASKS
    attributes: Mapped[list[Any]] = mapped_column(JSON)  # rating attributes (empty for other tasks)
    overlap: Mapped[int] = mapped_column(Integer)  # distinct annotators per non-gold item
    gold_rate: Mapped[float] = mapped_column(Float)
    qualification_items: Mapped[int] = mapped_column(Integer)
    qualification_threshold: Mapped[float] = mapped_column(Float)
    instructions: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)  # seeds each assignment's displayed order
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Membership(Base):
    """A user's part in a project: their role there, and what the project knows about them."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ID, ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ID, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # annotator | reviewer
    instructions_seen_at: Mapped[dt.datetime | None]
    qualification: Mapped[str] = mapped_column(String(16), default=NOT_REQUIRED)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)  # left out of overlap and exports


class Item(Base):
    """One unit of work: a prompt and the completions an annotator compares, ranks, rates or critiques."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "position"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ID, ForeignKey("projects.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # the order items are handed out in
    prompt: Mapped[Any] = mapped_column(JSON)  # a string or a list of chat messages
    completions: Mapped[list[Any]] = mapped_column(JSON)  # in their original order
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_answer: Mapped[Any | None] = mapped_column(JSON)  # in original completion indices
    is_qualification: Mapped[bool] = mapped_column(Boolean, default=False)
    # the policy that sampled the completions (`rlhflab serve --policy`, live projects); None from a samples file
    policy: Mapped[str | None] = mapped_column(Text)


class Assignment(Base):
    """An item shown to one annotator, with the order its completions were shown in."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        Index("ix_assignments_project_user_status", "project_id", "user_id", "status"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ID, ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ID, ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ID, ForeignKey("users.id", ondelete="CASCADE"))
    shown_order: Mapped[list[Any]] = mapped_column(JSON)  # shown_order[displayed position] = original index
    status: Mapped[str] = mapped_column(String(16), default=OPEN)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Label(Base):
    """An annotator's answer on an assignment, in original completion indices (tasks.resolve_label)."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        Index("ix_labels_project_user", "project_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ID, ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ID, ForeignKey("items.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ID, ForeignKey("users.id", ondelete="CASCADE"))
    assignment_id: Mapped[int] = mapped_column(ID, ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    seconds: Mapped[float | None] = mapped_column(Float)  # time on the page, as the page measured it
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)  # the item was gold when labelled
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Adjudication(Base):
    """A reviewer's resolution of an item whose labels disagree: the label it should have (in original
    completion indices, as a label is stored), why the annotators disagreed, and the labels they saw
    (``label_ids``: an item whose labels change afterwards goes back to the adjudication queue). One
    per item: deciding again replaces the decision (and its reviewer, cause and time)."""

    __tablename__ = "adjudications"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    project_id: Mapped[int] = mapped_column(ID, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ID, ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    reviewer_id: Mapped[int | None] = mapped_column(ID, ForeignKey("users.id", ondelete="SET NULL"))
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    cause: Mapped[str] = mapped_column(String(32))  # one of adjudication.CAUSES
    note: Mapped[str] = mapped_column(Text)
    label_ids: Mapped[list[Any]] = mapped_column(JSON)  # the labels the reviewer saw, ascending
    decided_at: Mapped[dt.datetime]


class LoginFailure(Base):
    """A failed sign-in, kept for ``Store.LOGIN_WINDOW`` to throttle guessing (OWASP ASVS 2.2.1).

    A table rather than a rate-limiting library: the libraries that fit FastAPI (slowapi and
    ``limits``, fastapi-limiter) keep their counts in process memory, Redis, Memcached or MongoDB,
    so they would either forget every count at a restart and count each worker apart, or need a
    service the app does not otherwise run. The database is shared by every worker and survives
    restarts; a failed login is rare enough for one insert each."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_username_at", "username", "at"),
        Index("ix_login_failures_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))  # as typed (cut to 64): the account tried
    address: Mapped[str | None] = mapped_column(String(64))  # the client's IP address; None from the CLI
    at: Mapped[dt.datetime]
