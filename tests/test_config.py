import pytest

from vlcofit.config.schema import DatasetCard, ExperimentConfig
from vlcofit.config.loading import apply_overrides, from_dict, save_experiment
from vlcofit.experiment import load_experiment
from vlcofit.errors import InputError


def _write(path, text):
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_field(tmp_path):
    cfg = _write(tmp_path / "exp.yaml", "train:\n  stepz: 3\n")
    with pytest.raises(InputError, match=r"exp.yaml.train: unknown key 'stepz'"):
        load_experiment(cfg)


def test_wrong_type_names_field(tmp_path):
    cfg = _write(tmp_path / "exp.yaml", "train:\n  steps: many\n")
    with pytest.raises(InputError, match=r"exp.yaml.train.steps: expected int, got 'many'"):
        load_experiment(cfg)
    with pytest.raises(InputError, match=r"train.lr: expected float"):
        from_dict(ExperimentConfig, {"train": {"lr": [1]}}, "x")


def test_no_is_a_string_in_set_and_a_named_mistake_in_a_file(tmp_path):
    """Accelerate's mixed_precision "no": YAML 1.1 reads an unquoted no as False."""
    cfg = load_experiment("demo", ["train.mixed_precision=no", "train.fit_measures=true"])
    assert cfg.train.mixed_precision == "no" and cfg.train.fit_measures is True
    with pytest.raises(InputError, match=r"train.fit_measures: expected bool, got 'yes'"):
        load_experiment("demo", ["train.fit_measures=yes"])
    path = _write(tmp_path / "exp.yaml", "train:\n  mixed_precision: no\n")
    with pytest.raises(InputError, match=r"exp.yaml.train.mixed_precision: expected .*got False: "
                                         r"YAML reads an unquoted no .* quote it"):
        load_experiment(path)


def test_ints_become_floats_and_lists_tuples():
    cfg = from_dict(ExperimentConfig, {"train": {"lr": 1, "datasets": ["a"]},
                                       "datasets": {"a": {"prompts": "demo"}}}, "x")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.datasets == ("a",)
    assert isinstance(cfg.datasets["a"], DatasetCard) and cfg.datasets["a"].name == "a"


def test_set_overrides_and_card_overrides(tmp_path):
    card = _write(tmp_path / "mycard.yaml", "format: csv\nroot: /videos\ntrain: t.csv\nprompts: demo\n")
    exp = _write(tmp_path / "exp.yaml", f"datasets:\n  mine: {card}\ntrain:\n  datasets: [mine]\n")
    cfg = load_experiment(exp, ["train.steps=7", "datasets.mine.root=/elsewhere", "model.train_text=true"])
    assert cfg.train.steps == 7
    assert cfg.datasets["mine"].root == "/elsewhere"
    assert cfg.datasets["mine"].train == "t.csv"
    assert cfg.model.train_text is True
    with pytest.raises(InputError, match="expected key=value"):
        apply_overrides({}, ["train.steps"])


def test_resolved_config_round_trips(tmp_path):
    exp = _write(tmp_path / "exp.yaml", "datasets:\n  demo: {card: demo, root: /data}\n"
                                         "train: {datasets: [demo], steps: 5}\n")
    cfg = load_experiment(exp)
    save_experiment(cfg, tmp_path / "resolved.yaml")
    assert load_experiment(tmp_path / "resolved.yaml") == cfg


def test_dataset_name_must_exist(tmp_path):
    exp = _write(tmp_path / "exp.yaml", "train: {datasets: [nope]}\n")
    with pytest.raises(InputError, match="train.datasets names 'nope'"):
        load_experiment(exp)


def test_bad_card_values(tmp_path):
    card = _write(tmp_path / "c.yaml", "task: detection\nprompts: demo\n")
    exp = _write(tmp_path / "exp.yaml", f"datasets:\n  c: {card}\n")
    with pytest.raises(InputError, match="c.yaml: task must be one of classification, localization, "
                                         "captions; got 'detection'"):
        load_experiment(exp)


def test_shipped_experiments_load():
    cfg = load_experiment("demo")
    assert cfg.train.datasets == ("demo",)
    assert cfg.datasets["demo"].task == "classification"


def test_invalid_yaml(tmp_path):
    exp = _write(tmp_path / "exp.yaml", "train: [unclosed\n")
    with pytest.raises(InputError, match="exp.yaml: invalid YAML"):
        load_experiment(exp)


def test_card_and_prompt_file_must_agree_on_class_count(tmp_path):
    from vlcofit.experiment import build_labels
    exp = _write(tmp_path / "exp.yaml", "datasets:\n  demo: {card: demo, num_classes: 9}\n"
                                         "train: {datasets: [demo]}\n")
    with pytest.raises(InputError, match=r"dataset demo: the card says num_classes=9 but .*demo.txt "
                                         r"lists 8 classes"):
        build_labels(load_experiment(exp))


@pytest.mark.parametrize("key,value", [("model.temporal", "lstm"), ("model.box_temporal", "lstm"),
                                       ("model.backbone", "timm")])
def test_bad_model_choices_name_the_key(tmp_path, key, value):
    exp = _write(tmp_path / "exp.yaml", "datasets:\n  demo: {card: demo}\ntrain: {datasets: [demo]}\n")
    with pytest.raises(InputError, match=rf"^--set {key}={value}: {key} must be one of"):
        load_experiment(exp, [f"{key}={value}"])
    section, field = key.split(".")
    _write(exp, f"datasets:\n  demo: {{card: demo}}\ntrain: {{datasets: [demo]}}\n"
                f"{section}: {{{field}: {value}}}\n")
    with pytest.raises(InputError, match=rf"^{exp}: {key} must be one of"):
        load_experiment(exp)


def test_ranges_name_file_or_set_item_field_and_value(tmp_path):
    exp = _write(tmp_path / "exp.yaml", "datasets:\n  demo: {card: demo, num_frames: 0}\n"
                                         "train: {datasets: [demo], lr: -1}\n")
    with pytest.raises(InputError, match=rf"^{exp}: datasets.demo.num_frames must be >= 1, got 0$"):
        load_experiment(exp)
    with pytest.raises(InputError, match=rf"^{exp}: train.lr must be >= 0, got -1.0$"):
        load_experiment(exp, ["datasets.demo.num_frames=8"])
    with pytest.raises(InputError, match=r"^--set train.lr=-2: train.lr must be >= 0, got -2.0$"):
        load_experiment(exp, ["datasets.demo.num_frames=8", "train.lr=-2"])
    # a later --set of the same key is the one that counts
    assert load_experiment(exp, ["datasets.demo.num_frames=8", "train.lr=-2", "train.lr=0"]).train.lr == 0
    card = _write(tmp_path / "card.yaml", "prompts: demo\nmin_crop_scale: 0\n")
    _write(exp, f"datasets:\n  c: {card}\ntrain: {{datasets: [c]}}\n")
    with pytest.raises(InputError, match=rf"^{card}: min_crop_scale must be in \(0, 1\], got 0.0$"):
        load_experiment(exp)
    with pytest.raises(InputError, match=r"^--set datasets.c.min_crop_scale=2: "
                                         r"datasets.c.min_crop_scale must be in \(0, 1\]"):
        load_experiment(exp, ["datasets.c.min_crop_scale=2"])


def test_set_of_a_localization_key_keeps_the_cards_other_keys(tmp_path):
    cfg = load_experiment("demo_ava", ["datasets.demo_ava.localization.person_score_threshold=0.5"])
    spec = cfg.datasets["demo_ava"].localization
    assert spec.person_score_threshold == 0.5 and spec.proposals_val == "proposals_val.pkl"
    with pytest.raises(InputError, match=r"^--set datasets.demo_ava.localization.fps=0: "
                                         r"datasets.demo_ava.localization.fps must be > 0, got 0.0$"):
        load_experiment("demo_ava", ["datasets.demo_ava.localization.fps=0"])
