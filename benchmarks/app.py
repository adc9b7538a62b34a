"""The feedback app under load, on this machine, on SQLite and on PostgreSQL side by side: how long
the server takes to render the labelling page and to store a label with 1, 10 and 50 annotators at
once, at a person's pace and saturated, and how long an export of 100,000 labels takes. Goals (issue
26): paced p95 under 50 ms at 50 annotators on both databases; saturated throughput; export < 10 s.

    python benchmarks/app.py                      # SQLite and PostgreSQL (127.0.0.1:5432), one worker
    python benchmarks/app.py --workers 2          # `rlhflab serve --workers 2`
    python benchmarks/app.py --workers 1 2        # both, side by side
    python benchmarks/app.py --quick --output /tmp/app   # write /tmp/app.md and .json instead
    python benchmarks/app.py --databases sqlite   # one of them
    python benchmarks/app.py --quick              # fewer requests, for a first look

Each annotator is an async HTTP client doing what a browser does: GET the labelling page (which
hands out the next item), then POST the form with the page's hidden fields, without following the
redirect. "Server time" is what the app itself spent on a request, from its ``Server-Timing``
header; "client time" adds the HTTP round trip and the wait in the server's queue (on 2 cores the
clients, the server and PostgreSQL share them). The server is ``rlhflab serve`` in a subprocess, on
a fresh database for each part (a SQLite file in a temporary folder; a PostgreSQL database created
on ``--pg_server`` and dropped afterwards). Its stderr is scanned for tracebacks, which are counted.
Results: ``benchmarks/results/app.md`` and ``app.json`` (or ``--output``); the summary gives saturated
throughput as a multiple of the baseline before issue 26's work on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

try:  # the load generator: an HTTP client that costs the shared cores a quarter of httpx's CPU per request
    import aiohttp
except ImportError:
    sys.exit("benchmarks/app.py needs aiohttp (a benchmark extra): pip install -e '.[bench]'")

from rlhflab.app import models as m
from rlhflab.app.auth import SESSION_COOKIE
from rlhflab.app.store import Store
from rlhflab.files import write_json, write_text
from rlhflab.hardware import matmul_peak

HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
SERVER_TIMING = re.compile(r"dur=([0-9.]+)")
RESULTS = Path(__file__).with_name("results")
# Saturated labels/s at 50 annotators, one worker, before issue 26's speed work: as the issue states
# them, and as benchmarks/results/app.md measured them (2 cores).
BASELINE_LABELS_PER_S = {"SQLite": (40.0, 54.7), "PostgreSQL": (27.0, 29.6)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_url: str, port: int, workers: int, log: Path) -> subprocess.Popen:
    """``rlhflab serve`` on ``port``, its stderr going to ``log`` (a pipe nobody reads would fill and
    stall it)."""
    command = [sys.executable, "-m", "rlhflab.cli", "serve", "--db", db_url, "--port", str(port)]
    process = subprocess.Popen([*command, "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rlhflab serve exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("rlhflab serve did not answer within 60 s")


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path, pg_server: str, part: str):
    """The URL of an empty database for one part of the benchmark: a new SQLite file in ``folder``,
    or a new PostgreSQL database on ``pg_server`` (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'{part}.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(pg_server)
    name = f"rlhflab_bench_{uuid.uuid4().hex[:10]}"
    connect = dict(host=server.host, port=server.port or 5432, user=server.username, dbname=server.database)
    with psycopg.connect(**connect, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**connect, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) the server process and its worker processes have used so far: a
    figure other jobs on the machine do not inflate, unlike latencies."""
    process = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


def database_cpu_seconds(db_url: str) -> dict[int, float] | None:
    """CPU seconds each PostgreSQL server process has used so far, by pid (None for SQLite, which runs
    inside the app's process, or where this user may not read them)."""
    if not db_url.startswith("postgresql"):
        return None
    used = {}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("postgres", "postmaster"):
            try:
                used[process.pid] = sum(process.cpu_times()[:2])
            except psutil.NoSuchProcess:
                continue
            except psutil.AccessDenied:
                return None
    return used


def cpu_used_since(before: dict[int, float], after: dict[int, float]) -> float:
    """The CPU seconds processes used between two readings: a backend that ended in between is not
    counted (its time is gone with it), so this is a lower bound, never a negative one."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def fsync_ms(folder: Path, repeats: int = 50) -> float:
    """Median milliseconds of one small write and fsync in ``folder``: the floor of every SQLite commit
    (synchronous=FULL waits for the disk), and SQLite commits one writer at a time."""
    path, times = folder / "fsync-probe", []
    with path.open("wb") as f:
        for _ in range(repeats):
            f.write(b"x" * 4096)
            t0 = time.perf_counter()
            f.flush()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - t0) * 1000)
    path.unlink()
    return statistics.median(times)


# Write transactions per stored label: the page that hands out the item, the submission that stores it.
COMMITS_PER_LABEL = 2


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def annotator(base: str, project_id: int, session: str, count: int, timings: dict, think: float, rng):
    """GET the labelling page and POST its form, ``count`` times, reading each page for a uniform
    think/2 … 3·think/2 seconds first (0: at once; with a pause, the first page load is spread over
    0 … think seconds); record server and client times."""
    if think > 0:  # people do not all open the page in the same millisecond
        await asyncio.sleep(rng.uniform(0, think))
    # idle connections are dropped before the server's keep-alive timeout (5 s) closes them: a request
    # sent on a connection the server is closing at that moment fails
    connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=2.0)
    cookies = {SESSION_COOKIE: session}
    timeout = aiohttp.ClientTimeout(total=120)
    jar = aiohttp.CookieJar(unsafe=True)  # the server is 127.0.0.1: aiohttp's default jar ignores IP hosts
    session_options = dict(cookies=cookies, cookie_jar=jar, connector=connector, timeout=timeout)
    async with aiohttp.ClientSession(base, **session_options) as client:
        for n in range(count):
            for kind in ("page", "submit"):
                if kind == "submit" and think > 0:
                    await asyncio.sleep(rng.uniform(think / 2, 3 * think / 2))
                t0 = time.perf_counter()
                if kind == "page":
                    async with client.get(f"/projects/{project_id}/label") as response:
                        text = await response.text()
                    fields = {k: html.unescape(v) for k, v in HIDDEN.findall(text)}
                    if "assignment_id" not in fields:
                        raise RuntimeError(f"no task on the labelling page (status {response.status})")
                else:
                    form = {**fields, "choice": "left" if n % 2 else "right", "seconds": "2.0"}
                    async with client.post(
                        f"/projects/{project_id}/label", data=form, allow_redirects=False
                    ) as response:
                        text = await response.text()
                    if response.status != 303:
                        raise RuntimeError(f"submission answered {response.status}: {text[:200]}")
                client_ms = (time.perf_counter() - t0) * 1000
                match = SERVER_TIMING.search(response.headers.get("server-timing", ""))
                timings[kind]["server"].append(float(match.group(1)) if match else client_ms)
                timings[kind]["client"].append(client_ms)


def bench_labelling(db_url: str, levels: list[int], labels_each: int, think: float, workers: int) -> list[dict]:
    store = Store(db_url)
    most = max(levels)
    samples = Path(tempfile.mkdtemp()) / "samples.jsonl"
    # enough items that no annotator runs out at any level (overlap 1: each item labelled once)
    num_items = sum(level * labels_each for level in levels) + 10
    samples.write_text(
        "".join(
            json.dumps({"prompt": f"Prompt {i}: say something kind.", "completions": [f"Reply A{i}.", f"Reply B{i}."]})
            + "\n"
            for i in range(num_items)
        )
    )
    project = store.create_project("bench", "pairwise", str(samples), overlap=1)
    names = [f"bench{i:02d}" for i in range(most)]
    for name in names:
        store.create_user(name, "bench-password-" + name, "annotator")
    store.add_members("bench", names)
    sessions = []
    for name in names:
        user = next(u for u in store.users() if u.username == name)
        store.mark_instructions_seen(project.id, user.id)
        sessions.append(store.create_session(user.id)[0])
    store.close()

    port = free_port()
    log = Path(tempfile.mkdtemp()) / "serve.log"
    server = start_server(db_url, port, workers, log)
    rows = []
    try:
        base = f"http://127.0.0.1:{port}"
        for level in levels:
            timings = {k: {"server": [], "client": []} for k in ("page", "submit")}
            t0, cpu0 = time.perf_counter(), server_cpu_seconds(server.pid)
            client0, database0 = time.process_time(), database_cpu_seconds(db_url)

            async def run(level=level, timings=timings):
                await asyncio.gather(
                    *(
                        annotator(base, project.id, sessions[i], labels_each, timings, think, random.Random(i))
                        for i in range(level)
                    )
                )

            asyncio.run(run())
            wall, cpu = time.perf_counter() - t0, server_cpu_seconds(server.pid) - cpu0
            # the load generator runs on the same cores: its CPU (this process) and the database's count
            # against what the machine can serve
            client_cpu = time.process_time() - client0
            database1 = database_cpu_seconds(db_url)
            database_cpu = cpu_used_since(database0, database1) if database0 is not None and database1 else None
            for kind in ("page", "submit"):
                server_ms, client_ms = timings[kind]["server"], timings[kind]["client"]
                rows.append(
                    {
                        "database": "PostgreSQL" if db_url.startswith("postgresql") else "SQLite",
                        "workers": workers,
                        "think_s": think,
                        "annotators": level,
                        "request": "labelling page (GET)" if kind == "page" else "label submission (POST)",
                        "n": len(server_ms),
                        "server_p50_ms": statistics.median(server_ms),
                        "server_p95_ms": percentile(server_ms, 95),
                        "client_p50_ms": statistics.median(client_ms),
                        "client_p95_ms": percentile(client_ms, 95),
                        "labels_per_second": level * labels_each / wall,
                        # the server's CPU per label stored (a page and a submission, and the rest)
                        "server_cpu_ms_per_label": 1000 * cpu / (level * labels_each),
                        "client_cpu_ms_per_label": 1000 * client_cpu / (level * labels_each),
                        "database_cpu_ms_per_label": (
                            1000 * database_cpu / (level * labels_each) if database_cpu is not None else None
                        ),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    text = log.read_text(errors="replace")
    tracebacks = text.count("Traceback (most recent call last)")
    if tracebacks:
        print(f"server log ({tracebacks} tracebacks): {text[-3000:]}", file=sys.stderr)
    for row in rows:
        row["server_tracebacks"] = tracebacks
    return rows


def bench_export(db_url: str, num_labels: int) -> dict:
    """``num_labels`` labels written straight into the tables (100 annotators x items), then timed
    through ``Store.export`` — the path ``rlhflab feedback export`` takes."""
    store = Store(db_url)
    annotators, num_items = 100, num_labels // 100
    samples = Path(tempfile.mkdtemp()) / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"prompt": f"Export prompt {i}", "completions": [f"first {i}", f"second {i}"]}) + "\n"
            for i in range(num_items)
        )
    )
    project = store.create_project("export-bench", "pairwise", str(samples), overlap=annotators)
    names = [f"exporter{i:03d}" for i in range(annotators)]
    users = [store.create_user(name, "bench-password-" + name, "annotator") for name in names]
    store.add_members("export-bench", names)
    now = m.utcnow()
    with store.engine.begin() as connection:
        items = connection.execute(
            m.Item.__table__.select().where(m.Item.project_id == project.id).order_by(m.Item.position)
        ).all()
        next_id = 1
        for user in users:
            assignments, labels = [], []
            for item in items:
                swapped = (item.id + user.id) % 2 == 0
                assignments.append(
                    dict(
                        id=next_id, project_id=project.id, item_id=item.id, user_id=user.id,
                        shown_order=[1, 0] if swapped else [0, 1], status=m.DONE, created_at=now,
                    )
                )  # fmt: skip
                labels.append(
                    dict(
                        project_id=project.id, item_id=item.id, user_id=user.id, assignment_id=next_id,
                        idempotency_key=uuid.uuid4().hex, value={"choice": "left", "winner": 1 if swapped else 0},
                        seconds=3.0, is_gold=False, created_at=now,
                    )
                )  # fmt: skip
                next_id += 1
            connection.execute(m.Assignment.__table__.insert(), assignments)
            connection.execute(m.Label.__table__.insert(), labels)
    output = Path(tempfile.mkdtemp()) / "preferences.jsonl"
    t0 = time.perf_counter()
    counts = store.export("export-bench", "preferences", str(output))
    seconds = time.perf_counter() - t0
    store.close()
    written = sum(1 for _ in output.open())
    result = {"labels": num_labels, "rows_written": written, "seconds": seconds, "counts": counts}
    print(json.dumps(result, default=str), flush=True)
    return result


def cpu_per_label(row: dict) -> float:
    """Milliseconds of CPU one stored label cost the whole machine: the server, the load-generating
    clients and (PostgreSQL) the database server."""
    return row["server_cpu_ms_per_label"] + row["client_cpu_ms_per_label"] + (row["database_cpu_ms_per_label"] or 0.0)


def summary(rows: list[dict], most: int, cores: int, fsync: float) -> list[str]:
    """The table of the goals at ``most`` annotators, one row per database and number of workers: paced
    p95, and saturated throughput against the issue's baseline and against benchmarks/results/app.md
    as it stood before the work on it (BASELINE_LABELS_PER_S); then the ceiling the saturated row's CPU
    per label sets on ``cores`` cores (and, on SQLite, its one-writer-at-a-time commits at ``fsync`` ms
    each), and whether 3x the baseline fits under it."""
    lines = [f"At {most} annotators (goal: paced p95 < 50 ms on both databases; saturated labels/s 3x the baseline):"]
    lines += ["", "| database | workers | paced server p95 ms | paced client p95 ms | saturated labels/s "]
    lines[-1] += "| x issue 26 baseline | x app.md before | saturated CPU ms/label: server / clients / database "
    lines[-1] += "| CPU ceiling labels/s | tracebacks |"
    lines += ["|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for database, workers in dict.fromkeys((r["database"], r["workers"]) for r in rows):
        at = [r for r in rows if (r["database"], r["workers"]) == (database, workers) and r["annotators"] == most]
        paced = [r for r in at if r["think_s"] > 0]
        saturated = [r for r in at if r["think_s"] == 0]
        issue, before = BASELINE_LABELS_PER_S[database]
        cpu, rate, ceiling = "–", float("nan"), float("nan")
        paced_p95 = max(r["server_p95_ms"] for r in paced)
        verdicts.append(
            f"{database}, {workers} worker(s): paced server p95 {paced_p95:.1f} ms "
            + ("meets the 50 ms goal." if paced_p95 < 50 else "misses the 50 ms goal.")
        )
        if saturated:
            row = saturated[0]
            rate = row["labels_per_second"]
            # every core busy with nothing but this work, and no worker process past one core (the GIL):
            # the most labels/s the machine can serve
            ceiling = min(cores * 1000 / cpu_per_label(row), workers * 1000 / row["server_cpu_ms_per_label"])
            disk = 1000 / (COMMITS_PER_LABEL * fsync) if database == "SQLite" else float("inf")
            db = row["database_cpu_ms_per_label"]
            cpu = f"{row['server_cpu_ms_per_label']:.1f} / {row['client_cpu_ms_per_label']:.1f} / "
            cpu += f"{db:.1f}" if db is not None else ("in the server" if database == "SQLite" else "not readable")
            goal = 3 * issue
            if disk < min(ceiling, goal):
                verdicts.append(
                    f"{database}, {workers} worker(s): {rate:.1f} labels/s, short of 3x the baseline ({goal:.0f}); "
                    f"SQLite commits one writer at a time and each commit waits for an fsync ({fsync:.2f} ms here), "
                    f"{COMMITS_PER_LABEL} per label: at most {disk:.0f} labels/s on this disk, so the goal cannot "
                    f"be met here without giving up durability; the run reached {rate / disk:.0%} of that bound."
                )
                ceiling = min(ceiling, disk)
            elif rate >= goal:
                verdicts.append(
                    f"{database}, {workers} worker(s): {rate:.1f} labels/s meets 3x the baseline ({goal:.0f})."
                )
            else:
                verdicts.append(
                    f"{database}, {workers} worker(s): {rate:.1f} labels/s, short of 3x the baseline ({goal:.0f}); "
                    f"the machine's {cores} cores at {cpu_per_label(row):.1f} ms of CPU per label (server, clients and "
                    f"database together; each worker process at most one core) cannot exceed {ceiling:.0f} labels/s"
                    + (", so the goal cannot be met here with the load generated on the same machine."
                       if ceiling < goal else f"; the run reached {rate / ceiling:.0%} of that ceiling.")
                )  # fmt: skip
        lines.append(
            f"| {database} | {workers} | {paced_p95:.1f} "
            f"| {max(r['client_p95_ms'] for r in paced):.1f} | {rate:.1f} | {rate / issue:.2f} "
            f"| {rate / before:.2f} | {cpu} | {ceiling:.0f} | {sum(r['server_tracebacks'] for r in at) // 2} |"
        )
    return lines + ["", *verdicts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument(
        "--pg_server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server (and a database to connect to) where a fresh database is made per part",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1],
        help="`rlhflab serve --workers`; several (e.g. 1 2) run everything once with each, side by side",
    )  # fmt: skip
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--labels_each", type=int, default=10, help="labels per annotator per level and pace")
    parser.add_argument(
        "--think", type=float, default=4.0, help="mean seconds an annotator reads a page before answering"
    )
    parser.add_argument("--export_labels", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="50 annotators only, 3 labels each, 10,000 exported")
    parser.add_argument(
        "--output", type=Path, default=None,
        help="where to write the results, as a path without suffix (.md and .json are added); "
        "default benchmarks/results/app (app-workersN with --workers N)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.levels, args.labels_each, args.export_labels = [max(args.levels)], 3, 10_000
    folder = Path(tempfile.mkdtemp(prefix="rlhflab-app-bench-"))
    peak = matmul_peak()["gflops_median"]
    rows, exports = [], {}
    for kind in args.databases:
        for workers in args.workers:
            for think in (args.think, 0.0):  # a fast human's pace, then no pause at all (the server saturated)
                with fresh_database(kind, folder, args.pg_server, f"labelling-{workers}-{think:g}") as url:
                    rows += bench_labelling(url, args.levels, args.labels_each, think, workers)
        with fresh_database(kind, folder, args.pg_server, "export") as url:
            exports[kind] = bench_export(url, args.export_labels)
    workers_flag = " ".join(map(str, args.workers))
    lines = [
        "# Feedback app under load",
        "",
        f"`python benchmarks/app.py{' --quick' if args.quick else ''} --workers {workers_flag}` on "
        f"{os.cpu_count()} cores (fp32 matmul {peak:.0f} GFLOP/s; the clients, the server and PostgreSQL share "
        f"them), {workers_flag} uvicorn worker(s), SQLite (WAL, synchronous=FULL) and PostgreSQL; "
        f"{args.labels_each} labels per annotator per row. Each annotator loads the labelling page (which hands "
        f"out the next item), reads it for a uniform {args.think / 2:g}-{1.5 * args.think:g} s (think = "
        f"{args.think:g} s; people take longer) or not at all (think = 0: every client fires its next request at "
        "once, a saturation test), then posts the form. Server time: the app's own `Server-Timing` (from the "
        "request reaching the app to its response; includes waiting for a worker thread and for the database); "
        "client time adds the HTTP round trip and the wait in the server's queue. Server CPU: the CPU time "
        "the server's processes used per label stored (other jobs on the machine do not inflate it); the summary "
        "adds the clients' and PostgreSQL's CPU per label, which bound what the cores can serve.",
        "",
        "| database | workers | think s | annotators | request | n | server p50 ms | server p95 ms | client p50 ms "
        "| client p95 ms | labels/s | server CPU ms/label | tracebacks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['database']} | {r['workers']} | {r['think_s']:g} | {r['annotators']} | {r['request']} | {r['n']} "
            f"| {r['server_p50_ms']:.1f} | {r['server_p95_ms']:.1f} | {r['client_p50_ms']:.1f} "
            f"| {r['client_p95_ms']:.1f} | {r['labels_per_second']:.1f} | {r['server_cpu_ms_per_label']:.1f} "
            f"| {r['server_tracebacks']} |"
        )
    fsync = fsync_ms(folder)
    lines += ["", *summary(rows, max(args.levels), os.cpu_count(), fsync)]
    lines.append("")
    for kind, export in exports.items():
        lines.append(
            f"Export of {export['labels']:,} labels to preferences JSONL ({export['rows_written']:,} rows), "
            f"{'PostgreSQL' if kind == 'postgresql' else 'SQLite'}: {export['seconds']:.2f} s (goal < 10 s)."
        )
    stem = "app" if args.workers == [1] else "app-workers" + "-".join(map(str, args.workers))
    output = args.output or RESULTS / stem
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text(output.with_name(output.name + ".md"), "\n".join(lines) + "\n")
    write_json(output.with_name(output.name + ".json"), {"labelling": rows, "export": exports, "matmul_gflops": peak})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
