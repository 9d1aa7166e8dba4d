"""Optimizer and learning-rate schedule: AdamW parameter groups from declared rules
(pretrained | new, no weight decay by kind, layer-wise lr decay by the depth each backbone
declares, regex multipliers, freezing), decoupled L2-SP towards the starting weights, linear
warmup then cosine (Plested et al. 2021's non-binary transfer knobs)."""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config.checks import freeze_block
from ..config.schema import TrainConfig
from ..errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Rule:
    key: str  # e.g. train.lr_mults
    pattern: str
    regex: re.Pattern
    mult: float


def _rules(key: str, mults: dict[str, float]) -> list[_Rule]:
    """``{regex: multiplier}`` (``key``) compiled, in order; a bad regex is an InputError
    (multipliers are range-checked with the config, vlcofit.config.checks)."""
    out = []
    for pattern, mult in mults.items():
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise InputError(f"{key}: {pattern!r} is not a regular expression ({err})") from None
        out.append(_Rule(key, pattern, regex, float(mult)))
    return out


def _first(rules: list[_Rule], name: str) -> int | None:
    return next((i for i, r in enumerate(rules) if r.regex.search(name)), None)


def _check_matched(rules: list[_Rule], names: list[str]) -> None:
    for rule in rules:
        if not any(rule.regex.search(n) for n in names):
            raise InputError(f"{rule.key}: {rule.pattern!r} matches no trainable parameter "
                             f"(of {len(names)}; see param_groups.json of a run for the names)")


def depth_of(model: nn.Module, name: str) -> tuple[str, int, int] | None:
    """(tower, depth d, tower's L) of a video-model parameter; outside the backbone (temporal
    module, heads, logit scale): ("new", 1, 0), i.e. depth L + 1. None: undeclared."""
    if not name.startswith("backbone."):
        return "new", 1, 0
    found = model.backbone.depth_of(name[len("backbone."):])
    if found is None:
        return None
    tower, d = found
    return tower, d, model.backbone.num_layers(tower)


def _depth_or_fail(model: nn.Module, name: str, why: str) -> tuple[str, int, int]:
    found = depth_of(model, name)
    if found is None:
        raise InputError(f"{why}: {name} is in no tower whose depths the "
                         f"{type(model.backbone).__name__} backbone declares (towers: "
                         f"{', '.join(model.backbone.tower_names()) or 'none'}); add its mapping there")
    return found


def _no_decay(model: nn.Module, name: str, p: nn.Parameter) -> bool:
    """No weight decay, by kind, for every backend: 1-D tensors (biases, norms, scales),
    position / class / token embeddings (the backbone declares its own), logit scales."""
    if p.ndim < 2 or name.endswith(("logit_scale", "logit_bias")):
        return True
    if name.startswith("backbone."):
        return model.backbone.is_embedding(name[len("backbone."):])
    return "embedding" in name or name.endswith("pos")


def _group_key(model, name: str, p, new_names: set[str], cfg: TrainConfig, rules) -> tuple:
    is_new = name in new_names
    transferred = not is_new and name in model.loaded_names
    depth = _depth_or_fail(model, name, "train.layer_decay") if cfg.layer_decay != 1.0 \
        else ("", 0, -1)
    return (is_new, _no_decay(model, name, p), depth, transferred,
            *(_first(r, name) for r in rules))


def _group_of(key: tuple, cfg: TrainConfig, rules) -> dict:
    is_new, no_decay, (tower, d, layers), transferred, lr_i, wd_i, sp_i = key
    mult = [1.0 if i is None else r[i].mult for r, i in zip(rules, (lr_i, wd_i, sp_i))]
    lr = (cfg.lr_new if is_new else cfg.lr) * cfg.layer_decay ** (layers + 1 - d) * mult[0]
    name = f"{'new' if is_new else 'pretrained'}{'_no_decay' if no_decay else ''}"
    name += f"/{tower}{d}" if tower not in ("", "new") else ""
    name += "".join(f"/{k}{i}" for k, i in (("lr", lr_i), ("wd", wd_i), ("l2sp", sp_i))
                    if i is not None)
    return {"params": [], "lr": lr, "name": name,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay * mult[1],
            "l2sp": cfg.l2sp * mult[2] if transferred else 0.0}


def param_groups(model: nn.Module, new_names: set[str], cfg: TrainConfig) -> list[dict]:
    """AdamW groups of the trainable parameters of a :class:`VideoCLIP`: (pretrained | new)
    x (decay | no decay), split further by depth (``train.layer_decay``) and by the first
    matching regex of ``train.lr_mults`` / ``wd_mults`` / ``l2sp_mults``. Each group has
    ``lr``, ``weight_decay`` and ``l2sp`` (alpha, for :func:`apply_l2sp`; 0 except on
    transferred weights, ``model.loaded_names``)."""
    rules = (_rules("train.lr_mults", cfg.lr_mults), _rules("train.wd_mults", cfg.wd_mults),
             _rules("train.l2sp_mults", cfg.l2sp_mults))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for r in rules:
        _check_matched(r, [n for n, _ in named])
    if cfg.l2sp > 0 and not model.loaded_names:
        raise InputError(f"train.l2sp={cfg.l2sp}: the model holds no transferred weights (a "
                         f"randomly initialised backbone and no model.init_from): L2-SP decays "
                         f"towards the starting weights, so it needs pretrained ones")
    groups: dict[tuple, dict] = {}
    for name, p in named:
        key = _group_key(model, name, p, new_names, cfg, rules)
        groups.setdefault(key, _group_of(key, cfg, rules))["params"].append(p)
    out = [groups[k] for k in sorted(groups, key=_order)]
    seen: dict[str, int] = {}
    for g in out:  # unique names (log keys): e.g. loaded and not-loaded tensors of one kind
        seen[g["name"]] = seen.get(g["name"], 0) + 1
        g["name"] += f"#{seen[g['name']]}" if seen[g["name"]] > 1 else ""
    return out


def _order(key: tuple) -> tuple:
    """pretrained before new, decay before no decay, then by depth: the old order of groups."""
    is_new, no_decay, (tower, d, _), transferred, *rule = key
    return (is_new, no_decay, tower, d, not transferred, *(-1 if i is None else i for i in rule))


def build_optimizer(model: nn.Module, new_names: set[str], cfg: TrainConfig,
                    fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`. ``fused`` (the trainer sets it on CUDA): one kernel for
    every parameter's update instead of a few per tensor group (``foreach``, the default)."""
    return torch.optim.AdamW(param_groups(model, new_names, cfg), betas=(0.9, 0.98), eps=1e-6,
                             fused=fused or None)


def group_table(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[dict]:
    """The resolved groups (for ``param_groups.json``): name, parameter names, lr, wd, L2-SP."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [{"group": g["name"], "parameters": [names[id(p)] for p in g["params"]],
             "lr": g["lr"], "weight_decay": g["weight_decay"], "l2sp": g["l2sp"]}
            for g in getattr(optimizer, "optimizer", optimizer).param_groups]


def format_table(table: list[dict]) -> str:
    rows = [f"{'group':<40} {'tensors':>7} {'lr':>10} {'wd':>8} {'l2sp':>8}"]
    rows += [f"{t['group']:<40} {len(t['parameters']):7d} {t['lr']:10.3g} "
             f"{t['weight_decay']:8.3g} {t['l2sp']:8.3g}" for t in table]
    return "\n".join(rows)


# --------------------------------------------------------------------------- freezing


def apply_freeze(model: nn.Module, specs: tuple[str, ...]) -> list[str]:
    """``train.freeze``: each item "TOWER:N" (a tower the backbone declares, e.g. image:4 /
    text:12: its embeddings and first N blocks, depth 0..N) or a regex over parameter names;
    returns the names frozen (``requires_grad=False``, so they stay out of the optimizer)."""
    frozen = []
    for spec in specs:
        block = freeze_block(spec)
        if block is not None:
            hit = _freeze_blocks(model, *block, spec)
        else:
            _check_not_a_bad_block(model, spec)
            regex = re.compile(spec)
            hit = [n for n, p in model.named_parameters() if p.requires_grad and regex.search(n)]
            if not hit:
                raise InputError(f"train.freeze: {spec!r} matches no trainable parameter")
        for name, p in model.named_parameters():
            if name in hit:
                p.requires_grad_(False)
        frozen += hit
    if frozen:
        logger.info("frozen by train.freeze: %d tensors", len(frozen))
    return frozen


def _towers(model: nn.Module) -> str:
    """The backbone's declared towers, for messages: "image and text"."""
    names = model.backbone.tower_names()
    if len(names) < 2:
        return names[0] if names else "none"
    return ", ".join(names[:-1]) + " and " + names[-1]


def _check_not_a_bad_block(model: nn.Module, spec: str) -> None:
    """A tower's name, a colon and no integer ("text:x"): a mistyped TOWER:N, not a regex."""
    tower, sep, n = spec.partition(":")
    if sep and tower in model.backbone.tower_names():
        raise InputError(f"train.freeze: {spec!r}: N must be an integer >= 0 ({tower}:N "
                         f"freezes the {tower} tower's embeddings and first N blocks), got {n!r}")


def _freeze_blocks(model: nn.Module, tower: str, n: int, spec: str) -> list[str]:
    if tower not in model.backbone.tower_names():
        raise InputError(f"train.freeze: {spec!r}: the {type(model.backbone).__name__} backbone "
                         f"declares no {tower!r} tower; towers are {_towers(model)}")
    layers = model.backbone.num_layers(tower)
    if n > layers:
        raise InputError(f"train.freeze: {spec!r} is deeper than the {tower} tower "
                         f"({layers} blocks)")
    hit, frozen_already = [], False
    for name, p in model.named_parameters():
        if not name.startswith("backbone."):
            continue
        t, d, _ = _depth_or_fail(model, name, f"train.freeze {spec!r}")
        if t == tower and d <= n:
            if p.requires_grad:
                hit.append(name)
            frozen_already = True
    if frozen_already and not hit:
        raise InputError(f"train.freeze: {spec!r}: the {tower} tower is frozen already"
                         + (" (model.train_text: false)" if tower == "text" else ""))
    return hit


# --------------------------------------------------------------------------- L2-SP

def attach_l2sp(optimizer: torch.optim.Optimizer) -> int:
    """Keep w0 (a copy of the current weights: call before any step, after the model is on its
    device) of every parameter in a group with ``l2sp > 0``, in the parameter's own dtype (the
    master weights'). Not saved: a resumed run re-derives it from the starting weights.
    Returns the number of tensors kept."""
    base = getattr(optimizer, "optimizer", optimizer)
    base.l2sp_w0 = {i: [p.detach().clone() for p in g["params"]]
                    for i, g in enumerate(base.param_groups) if g.get("l2sp", 0.0) > 0}
    return sum(len(v) for v in base.l2sp_w0.values())


@torch.no_grad()
def apply_l2sp(optimizer: torch.optim.Optimizer) -> None:
    """Decoupled L2-SP, right after ``optimizer.step()``: w <- w - lr * alpha * (w - w0) per
    group (its current ``lr`` and ``l2sp`` alpha), with w the weights after AdamW's step and
    its own decay (so the two decays act in sequence, each as AdamW's decoupled decay does),
    on the parameters the step updated (those with a gradient). Skipped with the step (fp16
    overflow)."""
    base = getattr(optimizer, "optimizer", optimizer)
    anchors = getattr(base, "l2sp_w0", None)
    if not anchors or getattr(optimizer, "step_was_skipped", False):
        return
    for i, refs in anchors.items():
        g = base.param_groups[i]
        pairs = [(p, r) for p, r in zip(g["params"], refs) if p.grad is not None]
        if pairs:
            params, w0 = (list(x) for x in zip(*pairs))
            torch._foreach_lerp_(params, w0, g["lr"] * g["l2sp"])  # w + c (w0 - w)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int,
                    total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` optimizer steps, then cosine decay to 0 at ``total``
    (the steps of one training phase)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
