"""What every toy-lab experiment writes: a PNG figure and a JSON payload with its wall time."""

from __future__ import annotations

import time
from pathlib import Path

from rlhflab.evaluation.plots import pyplot
from rlhflab.files import atomic_path, write_json

__all__ = ["finish", "pyplot", "save_figure"]


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def finish(run_dir, name: str, payload: dict, fig, started: float) -> dict:
    """Write ``name``.png and ``name``.json (with the wall time since ``started``) into ``run_dir``."""
    run_dir = Path(run_dir)
    payload["wall_time_s"] = round(time.perf_counter() - started, 2)
    fig.tight_layout()
    save_figure(fig, run_dir / f"{name}.png")
    write_json(run_dir / f"{name}.json", payload)
    return payload
