"""The transfer experiment's split (experiments/caltech_mofi.py): the categories it evaluates on
are never among the ones it trains on, and no training image is an evaluation image."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CALTECH = REPO.parent / "shared" / "data" / "caltech101"


@pytest.fixture(scope="module")
def experiment():
    if not (CALTECH / "train.txt").is_file():
        pytest.skip(f"Caltech-101 not found at {CALTECH} (../shared/data/caltech101)")
    sys.path.insert(0, str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("caltech_mofi", REPO / "experiments" / "caltech_mofi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(experiment, *argv: str):
    return experiment.build_parser().parse_args(["--data", str(CALTECH), *argv])


def _category(rel: str) -> str:
    return rel.split("/", 1)[0]


def test_heldout_categories_are_disjoint_from_training(experiment):
    chosen = experiment.select(_args(experiment, "--categories", "6", "--heldout-categories", "5",
                                     "--max-per-class", "4", "--max-test-per-class", "3"))
    train_cats, eval_cats = set(chosen["categories"]), set(chosen["eval_categories"])
    assert len(train_cats) == 6 and len(eval_cats) == 5 and not train_cats & eval_cats
    assert {_category(r) for r in chosen["train"]} == train_cats
    assert {_category(r) for r in chosen["eval_train"]} == eval_cats
    assert {_category(r) for r in chosen["eval_test"]} == eval_cats
    assert len(chosen["train"]) == 6 * 4 and len(chosen["eval_test"]) == 5 * 3
    assert not set(chosen["train"]) & (set(chosen["eval_train"]) | set(chosen["eval_test"]))
    # the caltech split files themselves: test images are not train images
    assert not set(chosen["eval_train"]) & set(chosen["eval_test"])
    again = experiment.select(_args(experiment, "--categories", "6", "--heldout-categories", "5",
                                    "--max-per-class", "4", "--max-test-per-class", "3"))
    assert again == chosen  # seeded: a rerun resumes on the same split


def test_more_training_images_leave_the_evaluation_set_alone(experiment):
    common = ("--categories", "6", "--heldout-categories", "5", "--max-test-per-class", "3",
              "--max-eval-train-per-class", "4")
    capped = experiment.select(_args(experiment, *common, "--max-per-class", "4"))
    everything = experiment.select(_args(experiment, *common, "--max-per-class", "0"))
    assert len(everything["train"]) > len(capped["train"]) == 6 * 4
    assert (everything["eval_train"], everything["eval_test"]) == (capped["eval_train"], capped["eval_test"])
    assert len(capped["eval_train"]) == 5 * 4
    default = experiment.select(_args(experiment, "--categories", "6", "--heldout-categories", "5",
                                      "--max-test-per-class", "3", "--max-per-class", "4"))
    assert default["eval_train"] == capped["eval_train"]   # the database follows --max-per-class by default


def test_zero_heldout_evaluates_on_the_training_categories(experiment):
    chosen = experiment.select(_args(experiment, "--categories", "3", "--heldout-categories", "0",
                                     "--max-per-class", "2", "--max-test-per-class", "2"))
    assert chosen["eval_categories"] == chosen["categories"]
    assert not set(chosen["train"]) & set(chosen["eval_test"])
    with pytest.raises(SystemExit, match="only 97 categories"):
        experiment.select(_args(experiment, "--categories", "3", "--heldout-categories", "98"))


def _module():
    sys.path.insert(0, str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("caltech_mofi_wise", REPO / "experiments" / "caltech_mofi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wise_interpolation_ends_are_exact_and_middle_is_linear():
    torch = pytest.importorskip("torch")
    wise = _module().interpolate_state_dicts
    g = torch.Generator().manual_seed(0)
    base = {"proj.weight": torch.eye(4), "bn.running_mean": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(0)}
    trained = {"proj.weight": torch.randn(4, 4, generator=g), "bn.running_mean": torch.randn(4, generator=g),
               "bn.num_batches_tracked": torch.tensor(100)}
    for key, t in wise(base, trained, 0.0).items():
        expected = trained[key] if key == "bn.num_batches_tracked" else base[key]
        assert torch.equal(t, expected), key
    for key, t in wise(base, trained, 1.0).items():
        assert torch.equal(t, trained[key]), key
    mid = wise(base, trained, 0.25)
    assert torch.allclose(mid["proj.weight"], 0.75 * base["proj.weight"] + 0.25 * trained["proj.weight"])
    assert torch.equal(mid["bn.num_batches_tracked"], torch.tensor(100))
    same = wise({"w": trained["proj.weight"]}, {"w": trained["proj.weight"]}, 0.3)["w"]
    assert torch.equal(same, trained["proj.weight"])  # a frozen trunk stays bit-identical
    with pytest.raises(ValueError, match="keys"):
        wise({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 0.5)


def test_kb_kind_common_nouns_are_concepts_names_are_things():
    kb_kind = _module().kb_kind
    assert kb_kind("motorcycle") == "concept" and kb_kind("water lily") == "concept"
    assert kb_kind("Snoopy") == "thing" and kb_kind("Joshua tree") == "thing"
