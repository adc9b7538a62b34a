"""``rlhflab report``: one self-contained HTML page per run (or several runs), read from what the runs
wrote; J beside Ĵ first, reward hacking shown, every run's text escaped, bad input a one-line error,
and the file written atomically. The browser check is tests/evaluation/test_report_browser.py."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from markupsafe import escape

from rlhflab.cli import main as cli_main
from rlhflab.errors import ConfigError
from rlhflab.evaluation import html_report
from rlhflab.evaluation.html_report import read_run, write_report
from rlhflab.evaluation.metrics import PolicyEvaluation, disagreeing_pairs
from tests.evaluation.report_runs import tiny_demo, tiny_loop, toy_report_folder

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, model_cache):
    return tiny_demo(tmp_path_factory.mktemp("report") / "demo")


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory, model_cache):
    return tiny_loop(tmp_path_factory.mktemp("report") / "loop")


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def _self_contained(html: str) -> None:
    """No address the browser would fetch: every src is a data URI, no link, script or style sheet."""
    assert all(src.startswith("data:image/png;base64,") for src in _images(html))
    assert not re.search(r"<(script|link|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html, re.I)
    assert "url(" not in html


def test_demo_writes_a_self_contained_report_with_the_oracle_beside_the_proxy_first(demo_run):
    html = (demo_run / "report.html").read_text()
    _self_contained(html)
    evaluation = json.loads((demo_run / "evaluation.json").read_text())
    final = evaluation["final"]["seen"]
    assert (
        f"{final['J']:.3f} ± {final['J_se']:.3f}" in html and f"{final['J_hat']:.3f} ± {final['J_hat_se']:.3f}" in html
    )
    reward = json.loads((demo_run / "reward" / "reward_report.json").read_text())
    assert f"{reward['accuracy']:.3f}" in html
    order = [
        html.index(heading)
        for heading in (
            "J (oracle) beside Ĵ (reward model), seen and unseen contexts",
            "Reward hacking",
            "Reward model: accuracy and calibration",
            "reliability diagram",
            "proxy and oracle reward against KL",
            "Samples before and after",
            "Resolved config (demo_config.yaml)",
        )
    ]
    assert order == sorted(order), "the sections are out of order"
    assert "ΔJ = " in html.split("J (oracle) beside")[0], "the paired ΔJ headline comes first"
    # before/after bars, reliability diagram, reward vs KL and step, losses: each an inlined PNG
    assert len(_images(html)) == 4
    # the samples are the evaluation's own, beside each other
    assert str(escape(evaluation["initial"]["seen"]["texts"][0])) in html
    assert str(escape(evaluation["final"]["seen"]["texts"][0])) in html


def test_every_piece_of_text_from_a_run_is_escaped(demo_run, tmp_path):
    run = tmp_path / "hostile"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("policy", "reward_model"))
    evaluation = json.loads((run / "evaluation.json").read_text())
    for sets in evaluation.values():
        for ev in sets.values():
            ev["texts"] = [HOSTILE + t for t in ev["texts"]]
            ev["contexts"] = [HOSTILE + c for c in ev["contexts"]]
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    config = (run / "demo_config.yaml").read_text().replace("oracle: keyword:e", f"oracle: '{HOSTILE}'")
    (run / "demo_config.yaml").write_text(config)
    html = write_report([run], tmp_path / "out.html").read_text()
    assert "<script" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(" in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") > 4  # samples, prompts, hacking pairs, config


def test_disagreeing_pairs_are_the_pairs_the_proxy_and_the_oracle_order_most_oppositely():
    # prompt 0: R_phi prefers a over b, R* prefers b (strongly both ways); prompt 1 agrees; prompt 2
    # disagrees mildly. Standardised: proxy (3,0,1,0,1.2,1) and oracle (0,1,0,1,0.4,0.5).
    ev = PolicyEvaluation(
        J=None, J_se=None, J_hat=None, J_hat_se=None, kl=None, kl_se=None, mean_length=1.0,
        truncated_fraction=0.0, distinct_1=1.0, distinct_2=1.0, n=6, num_prompts=3,
        prompt_index=[0, 0, 1, 1, 2, 2], contexts=["c0", "c0", "c1", "c1", "c2", "c2"],
        texts=["hack", "good", "x", "y", "p", "q"],
        oracle_rewards=[0.0, 1.0, 0.0, 1.0, 0.4, 0.5], proxy_rewards=[3.0, 0.0, 0.0, 1.0, 1.2, 1.0],
    )  # fmt: skip
    pairs = disagreeing_pairs(ev, k=5)
    assert [(p["preferred_by_proxy"], p["preferred_by_oracle"]) for p in pairs] == [("hack", "good"), ("p", "q")]
    import numpy as np

    proxy, oracle = np.array(ev.proxy_rewards), np.array(ev.oracle_rewards)
    zp, zo = (proxy - proxy.mean()) / proxy.std(), (oracle - oracle.mean()) / oracle.std()
    assert pairs[0]["score"] == pytest.approx((zp[0] - zp[1]) * (zo[1] - zo[0]))
    assert pairs[0]["proxy"] == (3.0, 0.0) and pairs[0]["oracle"] == (0.0, 1.0)
    assert disagreeing_pairs(ev, k=1) == pairs[:1]
    assert disagreeing_pairs(PolicyEvaluation(**{**ev.to_dict(), "proxy_rewards": None})) == []


def test_loop_writes_a_report_with_every_round(loop_run):
    html = (loop_run / "report.html").read_text()
    _self_contained(html)
    rows = json.loads((loop_run / "rounds.json").read_text())
    assert "π_0 (initial)" in html and "round 1" in html and "round 2" in html
    for row in rows:
        assert f"{row['seen']['J']:.3f} ± {row['seen']['J_se']:.3f}" in html
    # by round, reliability per round, reward vs KL, losses
    assert len(_images(html)) == 4


def test_several_runs_get_one_comparison_table_and_overlaid_curves(demo_run, loop_run, tmp_path):
    ppo = demo_run / "ppo"  # a training command's own directory is a run too
    out = write_report([demo_run, loop_run, ppo], tmp_path / "all.html")
    html = out.read_text()
    _self_contained(html)
    assert "3 runs compared" in html
    comparison = html.split('id="run-1"')[0]
    for label in ("demo", "loop"):
        assert f"<td>{label}</td>" in comparison
    # overlaid reward curves and losses, then each run's own figures (demo 4, loop 4, ppo 2)
    assert len(_images(html)) == 2 + 4 + 4 + 2
    assert html.count('<section class="run"') == 4


def test_a_toy_lab_report_shows_each_experiment_and_its_figure(tmp_path):
    run = toy_report_folder(tmp_path / "toy")
    html = write_report([run]).read_text()
    assert (run / "report.html").is_file()
    _self_contained(html)
    assert "coverage" in html and "seen 0.5 &lt;unseen&gt;" in html and "beta: beta_tradeoff" in html
    assert "ΔJ unseen 1.3 at β=0.01 | best at β=0.05</td>" in html  # a headline may hold a "|"
    assert len(_images(html)) == 2
    (run / "beta" / "beta_tradeoff.png").unlink()
    with pytest.raises(ConfigError, match="toy report run without beta/"):
        read_run(run)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d, "not an rlhflab run directory"),
        (lambda d: d / "missing", "no such run directory"),
    ],
)
def test_a_directory_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys, make, message):
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=message):
        read_run(path)
    assert cli_main(["report", str(path), "--output", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlhflab report: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_run_missing_files_names_them_and_leaves_no_report(demo_run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(demo_run, old, ignore=shutil.ignore_patterns("policy", "reward_model", "report.html"))
    (old / "reward" / "reward_report.json").unlink()
    (old / "evaluation.json").unlink()
    assert cli_main(["report", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "evaluation.json" in err and "reward/reward_report.json" in err
    assert not (old / "report.html").exists()
    assert [p.name for p in old.iterdir() if p.name.startswith(".")] == []

    unfinished = tmp_path / "unfinished-loop"
    unfinished.mkdir()
    (unfinished / "loop_config.yaml").write_text("rounds: 3\n")
    with pytest.raises(ConfigError, match="loop run without initial_evaluation.json, rounds.json"):
        read_run(unfinished)


def test_the_report_is_written_atomically(demo_run, tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    out.write_text("the previous, finished report")

    def broken(runs):
        raise RuntimeError("rendering failed half-way")

    monkeypatch.setattr(html_report, "render_report", broken)
    with pytest.raises(RuntimeError):
        write_report([demo_run], out)
    assert out.read_text() == "the previous, finished report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_the_report_command_writes_where_it_is_told(demo_run, tmp_path, capsys):
    out = tmp_path / "nested" / "one.html"
    assert cli_main(["report", str(demo_run), "--output", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert out.read_text().startswith("<!DOCTYPE html>") and out.read_text().rstrip().endswith("</html>")
