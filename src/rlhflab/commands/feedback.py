"""``rlhflab feedback create|reorder|assign|users|invite|stats|export`` and ``rlhflab serve``: the feedback app
from the command line, over the same store the web app uses (no HTTP involved).

Each subcommand is a config dataclass (``--config FILE.yaml`` and flags, as every rlhflab command)
and an entry function taking it. Bad input is a one-line error and exit status 2, with nothing
half-made left behind: a project is created in one transaction, an export written atomically.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rlhflab.app.export import FORMATS, KINDS
from rlhflab.app.live import LiveSampler
from rlhflab.app.live import log as live_log
from rlhflab.app.quality import agreement, annotator_quality, format_quality
from rlhflab.app.store import NotFound, ProjectInfo, Store, UserInfo
from rlhflab.app.tasks import ROLES, TASKS, check_conversations
from rlhflab.app.text import unstorable_text
from rlhflab.app.web import SERVE_OPTIONS_ENV, create_app, public_base
from rlhflab.commands.collect import SampleConfig, run_sample
from rlhflab.config import PromptOptions, SamplingOptions, option, parse_config
from rlhflab.data import encode_prompts, load_prompts
from rlhflab.data.render import completion_text, prompt_text
from rlhflab.errors import ConfigError, DataError
from rlhflab.feedback.acquisition import ORDERS, SCORED_ORDERS, acquisition_order, check_scorer, score_pairs
from rlhflab.models import load_policy
from rlhflab.models.decoder_parts import context_length
from rlhflab.progress import progress_shown
from rlhflab.rewards.registry import load_reward_source

# Where `feedback users --add` reads a password when there is no --password_file and no terminal
# to prompt on (scripts, tests).
PASSWORD_ENV = "RLHFLAB_FEEDBACK_PASSWORD"


def _names(text: str) -> list[str]:
    """``"a, b,c"`` → ``["a", "b", "c"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class DatabaseOptions:
    """Which database the feedback app keeps its projects, people and labels in."""

    db: str | None = option(
        None,
        "Database URL: sqlite:///FILE or postgresql+psycopg://USER@HOST/DB (default: $RLHFLAB_DB or sqlite:///rlhflab-feedback.db).",
    )

    def validate(self) -> None:
        """No option may hold a NUL (no path or database column takes one) or a lone surrogate (what
        Python makes of an argument that is not UTF-8)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = unstorable_text(value) if isinstance(value, str) else None
            if problem:
                raise ConfigError(f"--{f.name} {problem}")


@dataclass
class FeedbackCreateConfig(DatabaseOptions):
    """Create a labelling project from sampled completions (`rlhflab sample`)."""

    name: str | None = option(None, "Project name (unique).")
    samples: str | None = option(None, "Samples file: one {prompt, completions} row per prompt.")
    live: bool = option(
        False,
        "A live project: it may start without --samples, and `rlhflab serve --policy DIR --live_project NAME` "
        "keeps its queue filled with the policy's completions for new prompts as annotators work.",
    )
    task: str = option("pairwise", "What annotators do with each item.", choices=list(TASKS))
    attributes: str = option("", "Comma-separated attributes rated 1-7 (rating projects; default: overall).")
    overlap: int = option(3, "Distinct annotators per item (agreement needs at least 2).")
    gold: str | None = option(None, "Gold items with known answers: {prompt, completions, answer} rows.")
    instructions: str | None = option(None, "Markdown or text file of instructions, shown before the first task.")
    gold_rate: float = option(0.1, "Share of each annotator's tasks that are gold items (every round(1/rate)-th).")
    qualification_items: int = option(0, "Gold items every annotator labels first, to qualify for the rest.")
    qualification_threshold: float = option(0.7, "Share of qualification items an annotator must get right.")
    seed: int = option(0, "Seeds the order each annotator sees an item's completions in (and --order random).")
    order: str = option(
        "position",
        "The order non-gold items are handed out in: as created (position), most informative first by the "
        "disagreement of the --reward ensemble (uncertainty) or by the smallest --reward margin (margin), "
        "or shuffled (random); see rlhflab.feedback.acquisition. Pairwise projects only, but for position.",
        choices=list(ORDERS),
    )
    reward: str | None = option(
        None, "Reward model that scores the pairs for --order margin; an ensemble folder for --order uncertainty."
    )

    def validate(self) -> None:
        super().validate()
        if not self.name:
            raise ConfigError("--name is required")
        if not self.samples and not self.live:
            raise ConfigError(
                "--samples is required (a file written by `rlhflab sample`), or --live for a project that "
                "`rlhflab serve --policy DIR --live_project NAME` fills"
            )
        if self.live and not self.samples and self.order != "position":
            raise ConfigError(
                f"--order {self.order} orders the --samples items: a --live project without them has none"
            )
        _check_order(self.order, self.reward, self.task)


def _check_order(order: str, reward: str | None, task: str | None) -> None:
    if order in SCORED_ORDERS and not reward:
        raise ConfigError(f"--order {order} scores the pairs with a reward model: give --reward DIR")
    if order not in SCORED_ORDERS and reward:
        raise ConfigError(f"--reward scores pairs for --order uncertainty or margin, not --order {order}")
    if task is not None and task != "pairwise" and order != "position":
        raise ConfigError(f"--order {order} orders pairs: a pairwise project only, not {task}")


@dataclass
class FeedbackReorderConfig(DatabaseOptions):
    """Re-score the items of a pairwise project that still need labels and hand them out most informative
    first (run after retraining the reward model on the labels so far); assignments stay as they are."""

    project: str | None = option(None, "Project name.")
    order: str = option(
        "uncertainty", "How to order the queue (see `rlhflab feedback create --order`).", choices=list(ORDERS)
    )
    reward: str | None = option(None, "Reward model (margin) or ensemble folder (uncertainty) that scores the pairs.")
    seed: int = option(0, "Seed of --order random.")

    def validate(self) -> None:
        super().validate()
        if not self.project:
            raise ConfigError("--project is required")
        _check_order(self.order, self.reward, None)


@dataclass
class FeedbackUsersConfig(DatabaseOptions):
    """Add a user (--add NAME), or list every user."""

    add: str | None = option(None, "Username to add; without it, list the users.")
    role: str = option("annotator", "Role of the added user.", choices=list(ROLES))
    password_file: str | None = option(
        None, f"File whose first line is the new user's password (default: ${PASSWORD_ENV}, else a prompt)."
    )


@dataclass
class FeedbackInviteConfig(DatabaseOptions):
    """Make a single-use invitation link; whoever opens it picks a username and password."""

    role: str = option("annotator", "Role of the invited user.", choices=list(ROLES))
    projects: str = option("", "Comma-separated projects the invited user joins.")
    ttl_hours: float = option(72.0, "Hours until the invitation expires.")
    base_url: str = option(
        "", "Prefix for the printed link, e.g. https://feedback.example.org (default: the path only)."
    )


@dataclass
class FeedbackAssignConfig(DatabaseOptions):
    """Make users members of a project, as annotators or reviewers."""

    project: str | None = option(None, "Project name.")
    users: str = option("", "Comma-separated usernames.")
    role: str = option("annotator", "Their role in the project.", choices=["annotator", "reviewer"])

    def validate(self) -> None:
        super().validate()
        if not self.project or not _names(self.users):
            raise ConfigError("--project and --users are required")


@dataclass
class FeedbackStatsConfig(DatabaseOptions):
    """Agreement and per-annotator quality of a project's labels (Section 7.3.3), as Markdown tables."""

    project: str | None = option(None, "Project name.")

    def validate(self) -> None:
        super().validate()
        if not self.project:
            raise ConfigError("--project is required")


@dataclass
class FeedbackExportConfig(DatabaseOptions):
    """Export a project's labels as rlhflab feedback records (the input of `rlhflab reward`, `dpo`, ...)."""

    project: str | None = option(None, "Project name.")
    kind: str = option("preferences", "Records to write.", choices=list(KINDS))
    output: str | None = option(None, "Output: FILE.jsonl, FILE.parquet, or a folder (datasets save_to_disk).")
    format: str | None = option(None, "Output format (default: from the output's suffix).", choices=list(FORMATS))
    include_excluded: bool = option(False, "Keep the labels of annotators an admin excluded.")
    use_adjudicated: bool = option(False, "Export an adjudicated item's resolution instead of its labels.")
    overwrite: bool = option(False, "Replace --output if it is a folder that holds files (else that is an error).")

    def validate(self) -> None:
        super().validate()
        if not self.project or not self.output:
            raise ConfigError("--project and --output are required")


@dataclass
class LivePolicyOptions(SamplingOptions, PromptOptions):
    """A live project (rlhflab.app.live): the policy `rlhflab serve` samples its items from, and the prompts."""

    policy: str | None = option(
        None,
        "Policy that samples the --live_project's items: registry name, hub id or local path.",
        aliases=["--model"],
    )
    live_project: str | None = option(
        None, "Project (made by `feedback create --live`, or any) whose queue --policy keeps filled, from --prompts."
    )
    live_buffer: int = option(8, "Items of the live project kept waiting that no annotator has been given yet.")
    num_samples: int = option(2, "Completions sampled per prompt (a pairwise item is a pair of them).")
    seed: int = option(0, "Seeds the order the live project's prompts are taken in, and their sampling.")

    def check_live(self) -> None:
        if (self.policy is None) != (self.live_project is None):
            raise ConfigError("--policy and --live_project go together: the policy samples the live project's items")
        if self.policy is None:  # an option no live project uses is refused, not ignored
            given = [
                f.name
                for f in dataclasses.fields(LivePolicyOptions)
                if f.name not in ("policy", "live_project") and getattr(self, f.name) != f.default
            ]
            if given:
                raise ConfigError(f"--{given[0]} is an option of a live project: give --policy and --live_project too")
        if self.live_buffer < 1:
            raise ConfigError(f"--live_buffer must be at least 1, got {self.live_buffer}")
        if self.num_samples < 1 or self.generation_batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--num_samples, --generation_batch_size and --max_new_tokens must be at least 1")


@dataclass
class ServeConfig(LivePolicyOptions, DatabaseOptions):
    """Serve the feedback web app (labelling, review, dashboard, export) with uvicorn."""

    host: str = option("127.0.0.1", "Interface to listen on (127.0.0.1: this machine only).")
    port: int = option(8000, "Port to listen on.")
    secure_cookies: bool = option(False, "Mark session cookies Secure (serve behind HTTPS).")
    public_url: str | None = option(
        None, "Address people reach the app at, which invitation links begin with (default: http://HOST:PORT)."
    )
    workers: int = option(1, "Server processes (uvicorn workers), each with its own database connections.")
    read_timeout: float = option(30.0, "Seconds a request body may pause before the request is answered 408.")
    keep_alive_timeout: int = option(5, "Seconds an idle connection is kept open between requests (uvicorn's).")

    def validate(self) -> None:
        super().validate()
        self.check_live()
        public_base(self.base_url())
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if not 0 < self.read_timeout <= 3600:  # also refuses nan and inf
            raise ConfigError(f"--read_timeout must be between 0 and 3600 seconds, got {self.read_timeout}")
        if self.keep_alive_timeout < 1:
            raise ConfigError(f"--keep_alive_timeout must be at least 1 second, got {self.keep_alive_timeout}")

    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


# ---- entry functions ------------------------------------------------------------------------------
def run_feedback_create(cfg: FeedbackCreateConfig) -> ProjectInfo:
    instructions = ""
    if cfg.instructions:
        path = Path(cfg.instructions)
        if not path.is_file():
            raise ConfigError(f"{path}: instructions file not found")
        try:
            instructions = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(str(path), None, None, f"not UTF-8 text ({e.reason})") from None
        if unstorable_text(instructions):
            raise DataError(str(path), None, None, unstorable_text(instructions))
    if cfg.task == "turns" and cfg.samples:
        check_conversations(cfg.samples)  # a string prompt: one line naming its file:line, suggesting binary
    reward = load_reward_source(cfg.reward) if cfg.reward else None
    if cfg.order != "position":
        check_scorer(cfg.order, reward)  # a --reward that cannot score fails before the project exists
    with Store(cfg.db) as store:
        project = store.create_project(
            cfg.name,
            cfg.task,
            cfg.samples,
            attributes=_names(cfg.attributes),
            overlap=cfg.overlap,
            gold=cfg.gold,
            instructions=instructions,
            gold_rate=cfg.gold_rate,
            qualification_items=cfg.qualification_items,
            qualification_threshold=cfg.qualification_threshold,
            seed=cfg.seed,
        )
        if cfg.order != "position":
            order_queue(store, project.id, cfg.order, reward, cfg.seed)
        return project


def order_queue(store: Store, project: int | str, order: str, reward, seed: int = 0) -> int:
    """Score every item of pairwise ``project`` that still needs labels by ``order`` (``reward``: the
    loaded reward source that scores them, rlhflab.feedback.acquisition) and hand them out highest
    score first; returns how many items moved. ``position`` restores the creation order."""
    info = store.project(project)
    if info.task != "pairwise":
        raise ConfigError(f"project '{info.name}' is a {info.task} project: only pairwise queues are ordered by score")
    items = store.items_to_order(info.id)
    if not items:
        return 0
    if order == "position":
        scores = [-item["item_id"] for item in items]  # items were created in position order
    else:
        contexts = [prompt_text(item["prompt"]) for item in items]
        first = [completion_text(item["completions"][0]) for item in items]
        second = [completion_text(item["completions"][1]) for item in items]
        scores = score_pairs(order, reward, contexts, first, second, seed).tolist()
    ranks = acquisition_order(scores)
    return store.reorder_items(info.id, {items[i]["item_id"]: float(len(ranks) - n) for n, i in enumerate(ranks)})


def run_feedback_reorder(cfg: FeedbackReorderConfig) -> int:
    reward = load_reward_source(cfg.reward) if cfg.reward else None
    with Store(cfg.db) as store:
        return order_queue(store, cfg.project, cfg.order, reward, cfg.seed)


def _new_password(cfg: FeedbackUsersConfig) -> str:
    if cfg.password_file:
        path = Path(cfg.password_file)
        if not path.is_file():
            raise ConfigError(f"{path}: password file not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: the password file is not UTF-8 text ({e.reason})") from None
        return lines[0] if lines else ""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise ConfigError(f"no password: give --password_file FILE or set {PASSWORD_ENV}")
    password = getpass.getpass(f"password for {cfg.add}: ")
    if getpass.getpass("again: ") != password:
        raise ConfigError("the two passwords differ")
    return password


def run_feedback_users(cfg: FeedbackUsersConfig) -> UserInfo | list[UserInfo]:
    with Store(cfg.db) as store:
        if cfg.add:
            return store.create_user(cfg.add, _new_password(cfg), cfg.role)
        return store.users()


def run_feedback_invite(cfg: FeedbackInviteConfig) -> str:
    """The invitation's link (its path, after ``base_url``)."""
    with Store(cfg.db) as store:
        token = store.create_invitation(cfg.role, None, _names(cfg.projects), cfg.ttl_hours)
    return f"{cfg.base_url.rstrip('/')}/invite/{token}"


def run_feedback_assign(cfg: FeedbackAssignConfig) -> list[str]:
    names = _names(cfg.users)
    with Store(cfg.db) as store:
        store.add_members(cfg.project, names, cfg.role)
    return names


def run_feedback_stats(cfg: FeedbackStatsConfig) -> str:
    """The quality report of ``rlhflab.app.quality`` over every label of the project (each row says
    whether its annotator is excluded; the report decides what to count)."""
    with Store(cfg.db) as store:
        rows = store.label_rows(cfg.project)
    return format_quality(annotator_quality(rows), agreement(rows))


def run_feedback_export(cfg: FeedbackExportConfig) -> dict:
    output = Path(cfg.output)
    # A folder export replaces its output whole: never a folder of someone's files, unless asked.
    if output.is_dir() and any(output.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"{output}: a folder that holds files; choose another --output, or add --overwrite")
    with Store(cfg.db) as store:
        try:
            return store.export(
                cfg.project,
                cfg.kind,
                output,
                cfg.include_excluded,
                format=cfg.format,
                use_adjudicated=cfg.use_adjudicated,
            )
        except OSError as e:
            raise ConfigError(f"{output}: cannot write the export there ({e.strerror or e})") from None


def live_sampler(cfg: LivePolicyOptions, store: Store) -> LiveSampler:
    """The sampler that keeps ``cfg.live_project`` filled: the policy loaded once, every prompt read and
    encoded once (a prompt the policy cannot take fails here, in one line, not at each try), sampling
    done by ``rlhflab sample``'s own function with the same options."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SampleConfig) if hasattr(cfg, f.name)}
    options = SampleConfig(**{**shared, "output": ""})  # "": run_sample writes no file

    def sample(batch, seed: int):
        with progress_shown(False):  # no progress bar in the server's log for every top-up
            return run_sample(dataclasses.replace(options, seed=seed), policy, tokenizer, batch)

    try:  # the project and the options are checked before the policy loads
        sampler = LiveSampler(
            store,
            cfg.live_project,
            load_prompts(cfg.prompts, cfg.limit),
            sample,
            cfg.policy,
            num_samples=cfg.num_samples,
            buffer=cfg.live_buffer,
            seed=cfg.seed,
            batch_size=cfg.generation_batch_size,
        )
    except NotFound:
        raise ConfigError(
            f"--live_project: no project '{cfg.live_project}'; make it with "
            f"`rlhflab feedback create --name {cfg.live_project} --live`"
        ) from None
    policy, tokenizer = load_policy(cfg.policy)
    encode_prompts(
        tokenizer, sampler.prompts, cfg.use_chat_template, context_length(policy), cfg.max_new_tokens, cfg.truncate
    )
    return sampler


def _show_live_log() -> None:
    """The live sampler's lines (what it added, what failed) on stderr, beside uvicorn's."""
    if not live_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("rlhflab serve: %(message)s"))
        live_log.addHandler(handler)
        live_log.setLevel(logging.INFO)


def run_serve(cfg: ServeConfig) -> None:
    """Run the web app until interrupted (the store migrates the database on start), after saying
    where it listens and, on a database without an admin, how to add one.

    With ``--workers N`` (N > 1) uvicorn starts N processes from the factory
    ``rlhflab.app.web:app_from_environment``, each building its app from the options put in
    ``$RLHFLAB_SERVE_OPTIONS``; the database was migrated here first, so they find it at head.

    With ``--policy DIR --live_project NAME`` a :class:`rlhflab.app.live.LiveSampler` keeps that
    project's queue filled, in a thread of this process only (under ``--workers N``, uvicorn's
    supervisor, which serves no request): one sampler, however many workers."""
    import uvicorn

    store = Store(cfg.db)
    where = store.engine.url.render_as_string(hide_password=True)
    workers = f", {cfg.workers} workers" if cfg.workers > 1 else ""
    sampler = live_sampler(cfg, store) if cfg.live_project else None
    print(f"rlhflab serve: database {where}{workers}; open http://{cfg.host}:{cfg.port}/ (Ctrl-C stops)", flush=True)
    if not any(user.role == "admin" for user in store.users()):
        print("no admin yet: add one with `rlhflab feedback users --add NAME --role admin`", flush=True)
    if sampler is not None:
        print(
            f"live project '{sampler.project}': {cfg.policy} samples {cfg.num_samples} completions for each new "
            f"prompt of {cfg.prompts} ({len(sampler.order)}), keeping {cfg.live_buffer} items waiting",
            flush=True,
        )
        _show_live_log()
        sampler.start()
    options = {"secure_cookies": cfg.secure_cookies, "public_url": cfg.base_url(), "read_timeout": cfg.read_timeout}
    server = {"host": cfg.host, "port": cfg.port, "timeout_keep_alive": cfg.keep_alive_timeout}
    try:
        if cfg.workers == 1:
            uvicorn.run(create_app(store=store, **options), **server)
            return
        if sampler is None:
            store.close()  # the supervisor keeps connections only for its sampler
        os.environ[SERVE_OPTIONS_ENV] = json.dumps({"url": store.url, **options})
        uvicorn.run("rlhflab.app.web:app_from_environment", factory=True, workers=cfg.workers, **server)
    finally:
        if sampler is not None:
            sampler.stop(timeout=1)  # a sampling call under way is left to the daemon thread's end


# ---- `rlhflab feedback SUBCOMMAND` ---------------------------------------------------------------
def _users_done(cfg: FeedbackUsersConfig, result) -> str:
    if isinstance(result, UserInfo):
        return f"added {result.role} '{result.username}'"
    if not result:
        return "no users yet; add one with: rlhflab feedback users --add NAME --role admin"
    width = max(len(u.username) for u in result)
    return "\n".join(f"{u.username:<{width}}  {u.role}" for u in result)


def _create_done(cfg: FeedbackCreateConfig, p: ProjectInfo) -> str:
    made = f"created {p.task} project '{p.name}' (id {p.id}) with {p.num_items} items"
    return made + (f"; fill it with `rlhflab serve --policy DIR --live_project {p.name}`" if cfg.live else "")


def _export_done(cfg: FeedbackExportConfig, counts: dict) -> str:
    skipped = [
        f"{counts[key]} {what} skipped"
        for key, what in (("tie_skipped", "ties"), ("both_bad_skipped", "both-bad"), ("excluded_labels", "labels of excluded annotators"))
        if counts.get(key)
    ]  # fmt: skip
    if counts.get("adjudicated_items"):
        skipped.append(
            f"{counts['labels_replaced']} labels replaced by {counts['adjudicated_items']} items' adjudication"
        )
    extra = f"; {', '.join(skipped)}" if skipped else ""
    return f"wrote {counts['records']} {cfg.kind} from {counts['labels']} labels to {counts['output']}{extra}"


class Subcommand(NamedTuple):
    config: type
    entry: Callable[[Any], Any]
    help: str
    done: Callable[[Any, Any], str]


SUBCOMMANDS: dict[str, Subcommand] = {
    "create": Subcommand(
        FeedbackCreateConfig, run_feedback_create, "create a labelling project from samples", _create_done
    ),
    "reorder": Subcommand(
        FeedbackReorderConfig,
        run_feedback_reorder,
        "re-score the items that still need labels and reorder the queue",
        lambda cfg, moved: f"project '{cfg.project}': {moved} items moved in the queue ({cfg.order} order)",
    ),
    "assign": Subcommand(
        FeedbackAssignConfig,
        run_feedback_assign,
        "add users to a project as annotators or reviewers",
        lambda cfg, names: f"{', '.join(names)} now {cfg.role}(s) of project '{cfg.project}'",
    ),
    "users": Subcommand(FeedbackUsersConfig, run_feedback_users, "add a user, or list them", _users_done),
    "invite": Subcommand(
        FeedbackInviteConfig, run_feedback_invite, "make a single-use invitation link", lambda cfg, link: link
    ),
    "stats": Subcommand(
        FeedbackStatsConfig, run_feedback_stats, "agreement and annotator quality", lambda cfg, text: text
    ),
    "export": Subcommand(FeedbackExportConfig, run_feedback_export, "export labels as feedback records", _export_done),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"  {name:<{width}}  {sub.help}" for name, sub in SUBCOMMANDS.items()]
    return (
        "usage: rlhflab feedback SUBCOMMAND [--db URL] [--option value ...]\n\nsubcommands:\n"
        + "\n".join(lines)
        + "\n\nrlhflab feedback SUBCOMMAND --help lists its options."
    )


def run_feedback(argv: Sequence[str]) -> int:
    """``rlhflab feedback SUBCOMMAND ...``: parse the subcommand's config, run it, print what it made."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise ConfigError(f"unknown feedback subcommand '{name}'; choose from {', '.join(SUBCOMMANDS)}")
    sub = SUBCOMMANDS[name]
    cfg = parse_config(sub.config, rest, f"rlhflab feedback {name}", sub.config.__doc__)
    message = sub.done(cfg, sub.entry(cfg))
    if message:
        print(message)
    return 0
