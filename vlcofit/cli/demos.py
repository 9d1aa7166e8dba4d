"""The built-in demos by name (a light module: the CLI lists them without importing torch)."""
import json
from pathlib import Path

from ..data.synthetic.ava import make_demo_ava
from ..data.synthetic.compositional import make_compositional
from ..data.synthetic.demo import make_demo_dataset
from ..data.synthetic.target import make_demo_target
from ..experiment import load_experiment
from ..protocols.advise import advise
from ..protocols.sweep import best_versus, finished_metrics, sweep
from ..train.loop import clean_run_dir, train
from ..utils.distributed import process_state

# demo -> the experiment config it trains once
DEMOS = {"classification": "demo", "localization": "demo_ava", "cofinetune": "cofinetune_demo"}
# demo -> the experiment config it runs as a sweep (setting x seed); "transfer" starts from the
# classification demo's run
SWEEP_DEMOS = {"granularity": "granularity_demo", "transfer": "transfer_demo",
               "zero-shot": "zeroshot_demo", "text4vis": "text4vis_demo"}


def demo_generators() -> dict:
    """Built-in synthetic datasets, by dataset-card name: card name -> generator(root) -> the
    folder it wrote (the card's root)."""

    def demo_captions(root: Path) -> Path:
        # the demo's own videos and caption CSVs: one folder (``demo`` beside ``root``) for
        # both cards, so a run training on labels and captions reads each video file once
        return make_demo_dataset(Path(root).parent / "demo")

    def compositional_unseen(root: Path) -> Path:
        return make_compositional(Path(root).parent / "compositional")  # compositional's files

    return {"demo": make_demo_dataset, "demo_captions": demo_captions,
            "demo_target": make_demo_target, "demo_ava": make_demo_ava,
            "compositional": make_compositional, "compositional_unseen": compositional_unseen}


def _demo_data(name: str, out: Path) -> list[str]:
    """Generate the built-in datasets config ``name`` uses; their ``--set ...root=`` items."""
    generators = demo_generators()
    cfg = load_experiment(name)
    return [f"datasets.{n}.root={generators[c.name](out / 'data' / c.name)}"
            for n, c in cfg.datasets.items() if c.name in generators]


def run_sweep_demo(out: Path, overrides: list[str], which: str, fresh: bool = True) -> dict:
    """A built-in sweep (``SWEEP_DEMOS``) in ``out/<which>``; ``transfer`` first trains the
    classification demo (kept when finished) as its start, then adds the setting ``vlcofit
    advise`` recommends as one more arm, so the advice is measured beside the grid."""

    name, run_dir = SWEEP_DEMOS[which], out / which
    if fresh:
        clean_run_dir(run_dir)
    base = [*_demo_data(name, out), *overrides]
    arms = None
    if which == "transfer":
        start = out / "classification"
        if finished_metrics(start) is None:  # the start: trained once, kept
            run_demo(out, [], "classification", fresh=False)
        base.append(f"model.init_from={out / 'classification'}")
        cfg = load_experiment(name, base)
        advice = advise(cfg, run_dir / "advice")
        arms = {**cfg.sweep.arms, "advised": tuple(advice["set"])}
    report = sweep(name, base, run_dir, arms=arms)
    if arms is not None:
        report["advice_check"] = best_versus(report, "advised", report["shown"][0])
        if process_state().is_main_process:
            (run_dir / "sweep.json").write_text(json.dumps(report, indent=2))
    return report


def run_demo(out: Path, overrides: list[str], which: str = "classification",
             fresh: bool = True) -> tuple[dict[str, float], Path]:
    """Generate the synthetic data a demo experiment needs (once, under ``out/data``) and train +
    evaluate it in ``out/<which>``: each demo its own run folder, so one never deletes or resumes
    another's run. ``fresh=False`` resumes the demo's earlier run where there is one."""

    name = DEMOS[which]
    roots = _demo_data(name, out)
    run_dir = out / which
    if fresh:
        clean_run_dir(run_dir)
    cfg = load_experiment(name, [*roots, f"output_dir={run_dir}", *overrides])
    resume = "latest" if not fresh and (run_dir / "checkpoints" / "latest").is_file() else None
    return train(cfg, resume=resume), run_dir
