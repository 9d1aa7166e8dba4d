"""The compositional benchmark: colour x shape x motion names, seen / unseen split."""
import csv
from collections import Counter

from vlcofit.experiment import load_experiment
from vlcofit.data.synthetic.compositional import (
    COLOURS, MOTIONS, compositions, make_compositional, name, split_names, unseen,
)
from vlcofit.data.synthetic.clips import SHAPES
from vlcofit.utils.resources import resource_dir


def test_split_is_disjoint_and_covers_every_attribute():
    names = split_names()
    assert len(names["seen"]) == 36 and len(names["unseen"]) == 12
    assert not set(names["seen"]) & set(names["unseen"])
    seen = [c for c in compositions() if not unseen(*c)]
    for i, values in enumerate((COLOURS, SHAPES, MOTIONS)):
        counts = Counter(c[i] for c in seen)
        assert set(counts) == set(values) and min(counts.values()) >= 9, counts
    assert name("red", "circle", "moving left") == "a red circle moving left"
    # the synonym names: the unseen ones word for word, no word of theirs in any training name
    synonyms = names["unseen_synonyms"]
    assert len(set(synonyms)) == 12 and synonyms[1] == "a crimson box getting bigger"
    seen_words = {w for n in names["seen"] for w in n.split()}
    new_words = {w for n in synonyms for w in n.split()} - {"a", "an"}
    assert not new_words & seen_words, new_words & seen_words


def test_shipped_prompt_files_are_the_split():
    for split, names in split_names().items():
        shipped = (resource_dir("prompts") / f"compositional_{split}.txt").read_text()
        assert shipped.splitlines() == names
    every = (resource_dir("prompts") / "compositional_all.txt").read_text().splitlines()
    assert every == [name(*c) for c in compositions()] and len(every) == 48


def test_generator_writes_the_splits(tmp_path):
    root = make_compositional(tmp_path, per_class_train=1, per_class_val=1, per_class_fewshot=2,
                              size=32, num_frames=4)
    names = split_names()

    def labels(file):
        with open(root / file) as f:
            return [row["label"] for row in csv.DictReader(f)]
    assert sorted(labels("train.csv")) == sorted(names["seen"])
    assert sorted(labels("val_seen.csv")) == sorted(names["seen"])
    assert sorted(labels("val_unseen.csv")) == sorted(names["unseen"])
    # the few-shot pool: unseen compositions only, twice each, in files of their own
    assert sorted(labels("train_unseen.csv")) == sorted(names["unseen"] * 2)
    to_synonym = dict(zip(names["unseen"], names["unseen_synonyms"]))
    assert labels("val_unseen_synonyms.csv") == [to_synonym[n] for n in labels("val_unseen.csv")]
    paths = [(root / f).read_text().splitlines()[1:] for f in ("train.csv", "train_unseen.csv")]
    assert not {r.split(",")[0] for r in paths[0]} & {r.split(",")[0] for r in paths[1]}
    before = (root / "train" / "000000.mp4").read_bytes()
    make_compositional(tmp_path, per_class_train=1, per_class_val=1, per_class_fewshot=2,
                       size=32, num_frames=4)
    assert (root / "train" / "000000.mp4").read_bytes() == before  # made once, kept
    again = make_compositional(tmp_path / "b", per_class_train=1, per_class_val=1, size=32,
                               num_frames=4)
    assert (again / "val" / "000040.mp4").read_bytes() == (root / "val" / "000040.mp4").read_bytes()
    card = load_experiment("demo", ["datasets={c: {card: compositional}}", "train.datasets=[c]",
                                    f"datasets.c.root={root}"]).datasets["c"]
    assert card.num_classes == 36
