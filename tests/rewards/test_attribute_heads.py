"""Multi-attribute regression reward models (Eq. 7 with one head per rated attribute; several
objectives, Section 7.8): the ``attribute`` column of ratings, simulated attribute Likerts, the
heads trained on the shared backbone, ``DIR::attribute=NAME`` and composites of heads, and the
one-line errors. Tiny models only."""

import json
import random

import pytest
import torch

from rlhflab.cli import main
from rlhflab.commands.collect import AnnotateConfig, run_annotate
from rlhflab.commands.train import run_reward
from rlhflab.data import read_records, write_records
from rlhflab.data.records import Rating, Samples
from rlhflab.decoding.best_of_n import best_of_n
from rlhflab.errors import ConfigError, DataError
from rlhflab.feedback.annotators import make_pool, parse_attribute_oracles
from rlhflab.feedback.oracles import keyword_oracle
from rlhflab.models import load_policy
from rlhflab.rewards.heads import MANIFEST, select_attributes
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.reward_model import RewardConfig
from tests._env import TEST_SEED

# ---- two attributes driven by two oracles R* -------------------------------------------------------


ORACLES = {"a": keyword_oracle("a"), "z": keyword_oracle("z")}
ATTRIBUTE_ORACLES = "a=keyword:a, z=keyword:z"


def completions(n: int, seed: int) -> list[str]:
    """Outputs of 'x's and 'y's, with some 'a's in half of them and some 'z's in half, drawn
    independently: the two oracles (keyword:a, keyword:z) are uncorrelated, and a head can follow
    one only by learning its own attribute."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        letters = [rng.choice("xy") for _ in range(rng.randint(4, 10))]
        letters += ["a"] * rng.choice([0, rng.randint(1, 3)]) + ["z"] * rng.choice([0, rng.randint(1, 3)])
        rng.shuffle(letters)
        out.append("".join(letters))
    return out


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x.double(), y.double()]))[0, 1])


@pytest.fixture(scope="module")
def attribute_run(model_cache, tmp_path_factory):
    """Simulated two-attribute Likert ratings (`rlhflab annotate --attribute_oracles`) and the
    multi-attribute reward model trained on them (`rlhflab reward --attributes all`)."""
    root = tmp_path_factory.mktemp("attributes")
    texts = completions(256, seed=TEST_SEED)
    samples = [Samples(prompt="rate", completions=texts[i : i + 4]) for i in range(0, len(texts), 4)]
    annotate_cfg = AnnotateConfig(
        samples="<in memory>", feedback="rating", scale="likert:7", attribute_oracles=ATTRIBUTE_ORACLES,
        annotators=2, rating_noise=0.1, seed=TEST_SEED, output=str(root / "ratings.jsonl"),
    )  # fmt: skip
    annotate_cfg.validate()
    run_annotate(annotate_cfg, samples)
    out = root / "run"
    argv = ["reward", "--model", "tiny-reward", "--feedback", "rating", "--data", str(root / "ratings.jsonl")]
    argv += ["--attributes", "all", "--output_dir", str(out), "--batch_size", "16", "--num_epochs", "8"]
    argv += ["--learning_rate", "1e-3", "--progress", "false", "--seed", str(TEST_SEED)]
    torch.manual_seed(TEST_SEED)  # the fresh heads' initialisation
    assert main(argv) == 0
    return {"root": root, "model": out / "reward_model", "ratings": root / "ratings.jsonl"}


# ---- the record and the simulated ratings ----------------------------------------------------------


def test_a_rating_with_an_attribute_round_trips_and_an_empty_or_non_string_one_is_named(tmp_path):
    records = [
        Rating("Say hi.", "Hi!", 6, scale="likert:7", annotator="ann", attribute="helpful"),
        Rating("Say hi.", "Hi!", 2, scale="likert:7", attribute="harmless"),
        Rating("Say hi.", "Hi!", 0.5),
    ]
    path = tmp_path / "r.jsonl"
    write_records(records, path)
    assert json.loads(path.read_text().splitlines()[0])["attribute"] == "helpful"
    assert read_records(path, "rating") == records and [r.attribute for r in records] == ["helpful", "harmless", None]
    path.write_text(json.dumps({"prompt": "p", "completion": "o", "score": 1, "attribute": 3}) + "\n")
    with pytest.raises(DataError, match=r"r\.jsonl:1: field 'attribute': expected a string, got int"):
        read_records(path, "rating")
    with pytest.raises(DataError, match="field 'attribute': is empty"):
        Rating("p", "o", 1.0, attribute=" ")


def test_annotate_writes_one_rating_per_completion_and_attribute_each_by_its_own_oracle(tmp_path):
    samples = [Samples(prompt="rate", completions=["axyxy", "zxyxy", "azxyxy", "xyxy"])]
    cfg = AnnotateConfig(
        samples="<in memory>", feedback="rating", scale="likert:7", attribute_oracles=ATTRIBUTE_ORACLES,
        annotators=2, rating_noise=0.0, output=str(tmp_path / "r.jsonl"),
    )  # fmt: skip
    cfg.validate()
    records = run_annotate(cfg, samples)
    assert [(r.completion, r.attribute) for r in records] == [
        (c, a) for c in samples[0].completions for a in ("a", "z")
    ]
    # Without noise each score is its oracle binned onto 1..7 over [-1, 1]: R* = 0 -> 4, R* = 1 -> 7.
    expected = {"axyxy": (7, 4), "zxyxy": (4, 7), "azxyxy": (7, 7), "xyxy": (4, 4)}
    scores = {(r.completion, r.attribute): r.score for r in records}
    assert {c: (scores[c, "a"], scores[c, "z"]) for c in expected} == expected
    # One annotator rates every attribute of a completion, as in the feedback app.
    for c in samples[0].completions:
        assert len({r.annotator for r in records if r.completion == c}) == 1
    assert read_records(tmp_path / "r.jsonl", "rating") == records


@pytest.mark.parametrize(
    "options, message",
    [
        ({"attribute_oracles": "a=sentiment", "feedback": "preference"}, "use it with --feedback rating"),
        ({"attribute_oracles": "a=sentiment", "annotator_oracles": "sentiment"}, "cannot be combined"),
        ({"attribute_oracles": "a=sentiment,brevity"}, "expected NAME=ORACLE, got 'brevity'"),
        ({"attribute_oracles": "a=sentiment,a=brevity"}, "attribute 'a' is named twice"),
    ],
)
def test_bad_attribute_oracles_are_one_line_errors(options, message):
    cfg = AnnotateConfig(samples="s.jsonl", feedback=options.pop("feedback", "rating"), annotators=1, **options)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
    assert parse_attribute_oracles(" x = keyword:x ,y=length") == [("x", "keyword:x"), ("y", "length")]
    assert make_pool(keyword_oracle("a"), n=1).members[0].reward("c", "xa") == 1.0


# ---- training: each head learns its own attribute -----------------------------------------------------


def test_each_attribute_head_follows_its_own_oracle_not_the_other(attribute_run, record_margin):
    held_out = completions(256, seed=1000 + TEST_SEED)
    contexts = ["rate"] * len(held_out)
    truth = {name: torch.tensor([oracle("rate", o) for o in held_out]) for name, oracle in ORACLES.items()}
    assert abs(correlation(truth["a"], truth["z"])) < 0.3, "the held-out oracles should be nearly independent"
    for name, other in (("a", "z"), ("z", "a")):
        head = load_reward_source(f"{attribute_run['model']}::attribute={name}")(contexts, held_out)
        own, crossed = correlation(head, truth[name]), abs(correlation(head, truth[other]))
        record_margin(f"head {name}: correlation with its own oracle", own, 0.8)
        record_margin(f"head {name}: own minus |the other oracle's| correlation", own - crossed, 0.5)
        assert own >= 0.8 and own - crossed >= 0.5, (name, own, crossed)


def test_attribute_heads_round_trip_and_dir_alone_is_the_heads_mean(attribute_run):
    directory = attribute_run["model"]
    assert json.loads((directory / MANIFEST).read_text()) == {
        "format": "rlhflab-reward-heads/1",
        "kind": "attribute",
        "attributes": ["a", "z"],
    }
    contexts, outputs = ["rate"] * 3, ["aaaa", "zzxyzz", "ax"]
    heads = [load_reward_source(f"{directory}::attribute={name}")(contexts, outputs) for name in ("a", "z")]
    torch.testing.assert_close(load_reward_source(str(directory))(contexts, outputs), (heads[0] + heads[1]) / 2)
    # The heads regress Likert scores (1..7): their level is the rating scale's, not arbitrary.
    assert 1.0 < float(torch.stack(heads).mean()) < 7.0


def test_an_unknown_attribute_or_the_wrong_selector_is_a_one_line_error(attribute_run):
    directory = attribute_run["model"]
    with pytest.raises(ConfigError, match=r"unknown attribute 'tone'; the model knows a, z$"):
        load_reward_source(f"{directory}::attribute=tone")
    with pytest.raises(ConfigError, match="one head per attribute, not per annotator; select one with '::attribute="):
        load_reward_source(f"{directory}::annotator=a")
    with pytest.raises(ConfigError, match="takes '::attribute=NAME' or nothing"):
        load_reward_source(f"{directory}::wco")


# ---- bad rating files --------------------------------------------------------------------------------


def write_ratings(path, rows):
    path.write_text("".join(json.dumps({"prompt": "p", "completion": f"o{i}", "score": 1.0, **row}) + "\n"
                            for i, row in enumerate(rows)))  # fmt: skip
    return path


def test_a_rating_file_without_a_named_attribute_names_the_file_and_the_attribute(model_cache, tmp_path):
    data = write_ratings(tmp_path / "r.jsonl", [{"attribute": "helpful"}, {"attribute": "overall"}] * 4)
    config = RewardConfig(model="tiny-reward", feedback="rating", data=str(data), attributes="helpful,harmless")
    with pytest.raises(DataError, match=r"r\.jsonl: field 'attribute': no rating of attribute 'harmless'; "
                                        r"the file rates helpful, overall$"):  # fmt: skip
        run_reward(replace_output(config, tmp_path))
    plain = write_ratings(tmp_path / "plain.jsonl", [{}] * 4)
    config = RewardConfig(model="tiny-reward", feedback="rating", data=str(plain), attributes="helpful")
    with pytest.raises(DataError, match=r"plain\.jsonl: field 'attribute': no rating names an attribute; "
                                        r"--attributes helpful needs"):  # fmt: skip
        run_reward(replace_output(config, tmp_path))
    mixed = write_ratings(tmp_path / "mixed.jsonl", [{"attribute": "helpful"}, {}, {"attribute": "helpful"}])
    config = RewardConfig(model="tiny-reward", feedback="rating", data=str(mixed), attributes="all")
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: field 'attribute': missing"):
        run_reward(replace_output(config, tmp_path))
    assert not (tmp_path / "out" / "reward_model").exists()


def replace_output(config, tmp_path):
    config.output_dir = str(tmp_path / "out")
    return config


def test_listed_attributes_keep_their_order_and_leave_other_ratings_out():
    records = [Rating("p", f"o{i}", 1.0, attribute=a) for i, a in enumerate(["x", "y", "z", None, "y"])]
    kept, names = select_attributes(records, "y, x")
    assert names == ["y", "x"] and [r.completion for r in kept] == ["o0", "o1", "o4"]
    assert select_attributes(records[:3], "all") == (records[:3], ["x", "y", "z"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"attributes": "a"}, r"ratings \(--feedback rating\)"),
        ({"attributes": "a", "feedback": "rating", "ensemble": 2}, "cannot be combined"),
        ({"attributes": "a,,b", "feedback": "rating"}, "distinct names"),
        ({"attributes": "a,a", "feedback": "rating"}, "distinct names"),
    ],
)
def test_attribute_options_say_what_they_cannot_do(options, message):
    with pytest.raises(ConfigError, match=message):
        RewardConfig(**options).validate()


# ---- a composite of two heads, end to end --------------------------------------------------------------


def test_best_of_n_with_a_composite_of_two_attribute_heads_standardises_and_weighs_each(attribute_run, tmp_path):
    directory = attribute_run["model"]
    spec = f"0.7*{directory}::attribute=a + 0.3*{directory}::attribute=z"
    policy, tokenizer = load_policy("tiny-policy")
    chosen = best_of_n(
        policy, tokenizer, ["say a", "pick", "go"], load_reward_source(spec), n=4, max_new_tokens=10,
        use_chat_template=False, seed=TEST_SEED,
    )  # fmt: skip
    texts = [t for group in chosen.all_completions for t in group]
    contexts = [c for c in ("say a", "pick", "go") for _ in range(4)]

    def standardised(values):  # the first batch a composite scores is standardised by its own moments
        return (values - values.mean()) / (values.std(unbiased=False) + 1e-8)

    heads = [load_reward_source(f"{directory}::attribute={name}")(contexts, texts) for name in ("a", "z")]
    by_hand = 0.7 * standardised(heads[0]) + 0.3 * standardised(heads[1])
    torch.testing.assert_close(chosen.all_rewards.flatten(), by_hand, atol=1e-4, rtol=1e-4)
    # and the command line: `rlhflab bon --reward SPEC`
    out = tmp_path / "bon.jsonl"
    argv = ["bon", "--policy", "tiny-policy", "--reward", spec, "--limit", "3", "--n", "4", "--max_new_tokens", "8"]
    assert main([*argv, "--use_chat_template", "false", "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
