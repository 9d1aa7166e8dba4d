"""vlcofit: co-finetune CLIP video encoders across video datasets, with text-embedding heads.

The Python API, in the order a notebook uses it (each name is imported on first use, so that
``import vlcofit`` stays cheap and loader workers import only what they need)::

    import vlcofit
    cfg = vlcofit.load_config("demo", ["train.steps=20", "output_dir=runs/api"])
    metrics = vlcofit.train(cfg)                     # {"demo/top1": ...}
    model = vlcofit.load_model("runs/api").model     # a finished run's VideoCLIP
    predictor = vlcofit.load_predictor("runs/api")   # score videos against any names
    rows = vlcofit.predict_videos(predictor, ["a.mp4"], labels="my_names.txt")

The package's layers (docs/architecture.md) are, from the bottom: ``errors``, ``utils``,
``config``, ``text``, ``data``, ``metrics``, ``models``, ``eval``, ``tasks``, ``experiment``,
``run``, ``train``, ``protocols``, ``cli``; each imports only the layers below it.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute): the API, written once
_API = {
    "load_config": ("vlcofit.experiment", "load_experiment"),
    "load_card": ("vlcofit.experiment", "load_card"),
    "create_model": ("vlcofit.experiment", "create_model"),
    "train": ("vlcofit.train.loop", "train"),
    "load_model": ("vlcofit.run.model", "load_run_model"),
    "evaluate": ("vlcofit.protocols.evaluate", "evaluate_run"),
    "zero_shot": ("vlcofit.protocols.zeroshot", "zero_shot"),
    "few_shot": ("vlcofit.protocols.fewshot", "few_shot"),
    "load_predictor": ("vlcofit.protocols.predict", "load_predictor"),
    "predict_videos": ("vlcofit.protocols.predict", "predict_videos"),
    "predict_boxes": ("vlcofit.protocols.predict", "predict_boxes"),
    "make_demo_dataset": ("vlcofit.data.synthetic.demo", "make_demo_dataset"),
    "ExperimentConfig": ("vlcofit.config.schema", "ExperimentConfig"),
    "ModelConfig": ("vlcofit.config.schema", "ModelConfig"),
    "DatasetCard": ("vlcofit.config.schema", "DatasetCard"),
    "InputError": ("vlcofit.errors", "InputError"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'vlcofit' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
