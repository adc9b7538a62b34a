"""``rlhflab report RUN_DIR [RUN_DIR ...]``: one self-contained HTML page of one run or several
(demo, compare, loop, toy report, or any training command's directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhflab.config import option
from rlhflab.errors import ConfigError
from rlhflab.evaluation.html_report import write_report


@dataclass
class ReportConfig:
    """One self-contained HTML report of one run or several (demo, compare, loop, toy report, or any
    training command's directory): J beside Ĵ, reward hacking, calibration, curves, samples."""

    run_dirs: list[str] = option([], "Run directories (also given as the leading arguments).", nargs="+")
    output: str | None = option(None, "HTML file (default: RUN_DIR/report.html, or ./report.html for several runs).")

    def validate(self) -> None:
        if not self.run_dirs:
            raise ConfigError("name at least one run directory: rlhflab report RUN_DIR [RUN_DIR ...]")


def run_report(cfg: ReportConfig) -> Path:
    return write_report(cfg.run_dirs, cfg.output)
