"""The feedback app under load, on this machine: how long the server takes to render the labelling
page and to store a label with 1, 10 and 50 annotators at once, and how long an export of 100,000
labels takes. Goals (issue E1): p95 server time under 50 ms at 50 annotators; export under 10 s.

    python benchmarks/app.py                      # SQLite file in a temporary folder
    python benchmarks/app.py --db postgresql+psycopg://postgres@127.0.0.1:5432/DBNAME
    python benchmarks/app.py --quick              # fewer requests, for a first look
    python benchmarks/app.py --think 10           # annotators reading each page ~10 s

Each annotator is an async HTTP client doing what a browser does: GET the labelling page (which
hands out the next item), then POST the form with the page's hidden fields, without following the
redirect. "Server time" is what the app itself spent on a request, from its ``Server-Timing``
header (a client's latency at 50 annotators is mostly waiting in the server's queue on 2 cores, and
is reported beside it). The server is ``rlhflab serve`` in a subprocess, one uvicorn worker.
Results: ``benchmarks/results/app.md`` and ``app.json``.
"""

from __future__ import annotations

import argparse
import asyncio
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

from rlhflab.app import models as m
from rlhflab.app.auth import SESSION_COOKIE
from rlhflab.app.store import Store
from rlhflab.files import write_json, write_text
from rlhflab.hardware import matmul_peak

HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
SERVER_TIMING = re.compile(r"dur=([0-9.]+)")
RESULTS = Path(__file__).with_name("results")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_url: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "rlhflab.cli", "serve", "--db", db_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rlhflab serve exited: {process.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("rlhflab serve did not answer within 60 s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def annotator(base: str, project_id: int, session: str, count: int, timings: dict, think: float, rng):
    """GET the labelling page and POST its form, ``count`` times, reading each page for a uniform
    think/2 … 3·think/2 seconds first (0: at once; with a pause, the first page load is spread over
    0 … think seconds); record server and client times."""
    if think > 0:  # people do not all open the page in the same millisecond
        await asyncio.sleep(rng.uniform(0, think))
    async with httpx.AsyncClient(base_url=base, cookies={SESSION_COOKIE: session}, timeout=120) as client:
        for n in range(count):
            for kind in ("page", "submit"):
                if kind == "submit" and think > 0:
                    await asyncio.sleep(rng.uniform(think / 2, 3 * think / 2))
                t0 = time.perf_counter()
                if kind == "page":
                    response = await client.get(f"/projects/{project_id}/label")
                    fields = {k: html.unescape(v) for k, v in HIDDEN.findall(response.text)}
                    if "assignment_id" not in fields:
                        raise RuntimeError(f"no task on the labelling page (status {response.status_code})")
                else:
                    form = {**fields, "choice": "left" if n % 2 else "right", "seconds": "2.0"}
                    response = await client.post(f"/projects/{project_id}/label", data=form)
                    if response.status_code != 303:
                        raise RuntimeError(f"submission answered {response.status_code}: {response.text[:200]}")
                client_ms = (time.perf_counter() - t0) * 1000
                match = SERVER_TIMING.search(response.headers.get("server-timing", ""))
                timings[kind]["server"].append(float(match.group(1)) if match else client_ms)
                timings[kind]["client"].append(client_ms)


def bench_labelling(db_url: str, levels: list[int], labels_each: int, think: float) -> list[dict]:
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
    server = start_server(db_url, port)
    rows = []
    try:
        base = f"http://127.0.0.1:{port}"
        for level in levels:
            timings = {k: {"server": [], "client": []} for k in ("page", "submit")}
            t0 = time.perf_counter()

            async def run(level=level, timings=timings):
                await asyncio.gather(
                    *(
                        annotator(base, project.id, sessions[i], labels_each, timings, think, random.Random(i))
                        for i in range(level)
                    )
                )

            asyncio.run(run())
            wall = time.perf_counter() - t0
            for kind in ("page", "submit"):
                server_ms, client_ms = timings[kind]["server"], timings[kind]["client"]
                rows.append(
                    {
                        "think_s": think,
                        "annotators": level,
                        "request": "labelling page (GET)" if kind == "page" else "label submission (POST)",
                        "n": len(server_ms),
                        "server_p50_ms": statistics.median(server_ms),
                        "server_p95_ms": percentile(server_ms, 95),
                        "client_p50_ms": statistics.median(client_ms),
                        "client_p95_ms": percentile(client_ms, 95),
                        "labels_per_second": level * labels_each / wall,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.kill()
        server.wait()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file per part)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--labels_each", type=int, default=10, help="labels per annotator per level and pace")
    parser.add_argument(
        "--think", type=float, default=4.0, help="mean seconds an annotator reads a page before answering"
    )
    parser.add_argument("--export_labels", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="3 labels each, 10,000 exported")
    args = parser.parse_args()
    if args.quick:
        args.labels_each, args.export_labels = 3, 10_000
    folder = Path(tempfile.mkdtemp(prefix="rlhflab-app-bench-"))
    peak = matmul_peak()["gflops_median"]
    rows = []
    for think in (args.think, 0.0):  # a fast human's pace, then no pause at all (the server saturated)
        db_url = args.db or f"sqlite:///{folder / f'labelling-{think:g}.db'}"
        rows += bench_labelling(db_url, args.levels, args.labels_each, think)
        if args.db:
            break  # one database holds one "bench" project
    export = bench_export(args.db or f"sqlite:///{folder / 'export.db'}", args.export_labels)
    backend = "PostgreSQL" if (args.db or "").startswith("postgresql") else "SQLite (WAL, synchronous=FULL)"
    lines = [
        "# Feedback app under load",
        "",
        f"`python benchmarks/app.py{' --quick' if args.quick else ''}` on {os.cpu_count()} cores "
        f"(fp32 matmul {peak:.0f} GFLOP/s), {backend}, one uvicorn worker; {args.labels_each} labels per "
        "annotator per row. Each annotator loads the labelling page (which hands out the next item), reads it "
        f"for a uniform {args.think / 2:g}-{1.5 * args.think:g} s (think = {args.think:g} s; people take longer) "
        "or not at all (think = 0: every client fires its next request at once, a saturation test), then "
        "posts the form. Server time: the app's own `Server-Timing` (from the request reaching the app to "
        "its response; includes waiting for a worker thread and for the database); client time adds the "
        "HTTP round trip.",
        "",
        "| think s | annotators | request | n | server p50 ms | server p95 ms | client p50 ms | client p95 ms "
        "| labels/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['think_s']:g} | {r['annotators']} | {r['request']} | {r['n']} | {r['server_p50_ms']:.1f} "
            f"| {r['server_p95_ms']:.1f} | {r['client_p50_ms']:.1f} | {r['client_p95_ms']:.1f} "
            f"| {r['labels_per_second']:.1f} |"
        )
    most = max(args.levels)
    for think in sorted({r["think_s"] for r in rows}, reverse=True):
        worst = max(r["server_p95_ms"] for r in rows if r["annotators"] == most and r["think_s"] == think)
        lines += ["", f"Goal p95 < 50 ms at {most} annotators, think {think:g} s: worst server p95 {worst:.1f} ms."]
    lines += [
        "",
        f"Export of {export['labels']:,} labels to preferences JSONL ({export['rows_written']:,} rows): "
        f"{export['seconds']:.2f} s (goal < 10 s).",
    ]
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / "app.md", "\n".join(lines) + "\n")
    write_json(RESULTS / "app.json", {"labelling": rows, "export": export, "matmul_gflops": peak})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
