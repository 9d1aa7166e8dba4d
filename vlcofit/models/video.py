"""The video model: CLIP image tower per frame -> temporal module -> video embedding, scored
against rows of one text-embedding label space (or a random-init linear head, for comparison).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import ModelConfig
from ..errors import InputError
from .backbones.base import Backbone
from .backbones.factory import build_backbone
from .boxes import BoxHead
from .notices import weights_follow
from .prepared import evaluating
from .temporal import build_temporal
from .text import class_embeddings

logger = logging.getLogger(__name__)

MAX_LOG_SCALE = math.log(100.0)  # open_clip / CLIP: exp(logit_scale) <= 100
SIGLIP_BIAS_INIT = -10.0  # SigLIP's initial logit bias (Zhai et al. 2023), for ``loss: sigmoid``


class VideoCLIP(nn.Module):
    """Video encoder + text classifier over a label space.

    ``class_names[i]`` / ``class_templates[i]`` define label-space row i; a dataset's classes
    are a list of rows. With a frozen text tower the class matrix is computed once and cached
    (not saved: it is a function of the saved text tower). Training the text tower, each step
    encodes only its dataset's rows, one random template per class (``_encode_sampled``).

    Logit scales are clamped into range after each optimizer step (``clamp_logit_scales``),
    after loading weights and at build time, never in the forward pass.

    ``sigmoid`` (``model.loss``): SigLIP's loss, logits ``scale * cos + logit_bias``; a
    SigLIP backbone brings its trained bias, a CLIP one trained with it starts at -10.
    """

    def __init__(self, backbone: Backbone, cfg: ModelConfig, class_names: Sequence[str],
                 class_templates: Sequence[Sequence[str]]):
        super().__init__()
        self.backbone = backbone
        self.temporal = build_temporal(cfg.temporal, backbone.embed_dim, cfg.temporal_layers)
        # One-element vectors, not scalars: FSDP 2 cannot shard a 0-d parameter.
        self.logit_scale = nn.Parameter(torch.tensor([float(backbone.logit_scale_init)]))
        bias = backbone.logit_bias_init
        self.sigmoid = cfg.loss == "sigmoid" or (cfg.loss == "auto" and bias is not None)
        self.logit_bias = None if bias is None and not self.sigmoid else nn.Parameter(
            torch.tensor([SIGLIP_BIAS_INIT if bias is None else float(bias)]))
        self.train_text = cfg.train_text
        self.class_names = list(class_names)
        self.class_templates = [tuple(t) for t in class_templates]
        self.linear = nn.Linear(backbone.embed_dim, len(class_names)) if cfg.head == "linear" else None
        self.box_head: nn.Module | None = None  # set by build_model for localisation runs
        for p in backbone.text_parameters():
            p.requires_grad_(cfg.train_text)
        # A plain attribute, not a buffer: DDP would broadcast it, checkpoints would store it.
        self._text_cache: torch.Tensor | None = None
        self._tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._draws: torch.Generator | None = None  # see seed_text_draws
        self.register_load_state_dict_pre_hook(_scalars_as_vectors)
        self.register_load_state_dict_post_hook(_clamp_after_load)
        # Where each parameter's starting value came from, recorded where weights are loaded:
        # the backbone is the base model (``train.lr``) even when randomly initialised (tests,
        # training from scratch), but only weights read from a tag, file or folder (or from
        # ``model.init_from``: :func:`vlcofit.run.checkpoint.load_matching`) are transferred (L2-SP).
        # A backbone may load only part of itself (a Hugging Face text encoder under a new
        # projection, which is then a new parameter): it says which (Backbone.loaded_...).
        fresh = backbone.random_head_names()
        self.base_names = {f"backbone.{n}" for n, _ in backbone.named_parameters() if n not in fresh}
        self.loaded_names = {f"backbone.{n}" for n in backbone.loaded_parameter_names()}

    # ------------------------------------------------------------------ parameters

    def new_parameter_names(self) -> set[str]:
        """Parameters not from the starting weights: they get ``train.lr_new``."""
        return {n for n, _ in self.named_parameters() if n not in self.base_names}

    def mark_loaded(self, names) -> None:
        """Tensors ``names`` now hold loaded starting weights (``model.init_from``)."""
        own = {n for n, _ in self.named_parameters()} & set(names)
        self.base_names |= own
        self.loaded_names |= own

    def image_tower_loaded(self) -> bool:
        """Whether the image tower starts from loaded weights (a loaded text encoder beside a
        random image tower is not a pretrained start for the image side)."""
        return any((self.backbone.depth_of(n[len("backbone."):]) or ("",))[0] == "image"
                   for n in self.loaded_names if n.startswith("backbone."))

    def reinit_last(self, n: int) -> list[str]:
        """``model.reinit_last``: re-initialise the last ``n`` image-tower blocks (they become new
        parameters); returns their names."""
        if not self.image_tower_loaded():
            raise InputError(f"model.reinit_last={n}: the model has no pretrained start (random-init "
                             f"backbone, no model.pretrained / init_from): nothing to re-initialise from")
        layers = self.backbone.num_layers("image")
        if n > layers:
            raise InputError(f"model.reinit_last={n}: the image tower has only {layers} blocks")
        names = [f"backbone.{k}" for k in self.backbone.reinit_last(n)]
        self.base_names -= set(names)
        self.loaded_names -= set(names)
        logger.info("re-initialised the last %d image-tower blocks (%d tensors)", n, len(names))
        return names

    def clamp_logit_scales(self) -> None:
        """Clamp every logit scale in place into its range; call after each optimizer step.

        As open_clip's training loop (``logit_scale.clamp_(0, math.log(100))`` under no_grad after
        ``optimizer.step()``). A clamp in the forward pass instead zeroes the gradient of a scale
        at its cap: OpenAI's stored 4.6052 > ln 100, so that scale would never move."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, MAX_LOG_SCALE)
        if self.box_head is not None:
            self.box_head.clamp_logit_scale()

    # ------------------------------------------------------------------ video

    def encode_video(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, 3, H, W] -> (video embedding [B, E], patch-token map [B, D, T, h, w]; None
        where the image tower has none). uint8 frames are normalised here (``Backbone.pixels``);
        float frames are taken as normalised."""
        b, t = video.shape[:2]
        pooled, tokens = self.backbone.encode_frames(self.backbone.pixels(video.flatten(0, 1)))
        emb = self.temporal(pooled.reshape(b, t, -1))
        if tokens is None:
            return emb, None
        grid = int(math.isqrt(tokens.shape[1]))
        token_map = tokens.reshape(b, t, grid, grid, -1).permute(0, 4, 1, 2, 3)
        return emb, token_map

    # ------------------------------------------------------------------ text

    def embed_texts(self, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Any class names -> [C, E] (zero-shot with new labels). No gradient, eval mode."""
        with torch.no_grad(), evaluating(self.backbone):
            return class_embeddings(self.backbone, names, templates)

    def class_matrix(self, rows: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Unit class embeddings [R, E] of label-space ``rows`` (all C rows if None).

        Frozen text tower or eval mode: the template ensemble (``class_embeddings``) of every row,
        computed once and cached. Training the text tower: ``_encode_sampled`` (with gradients)."""
        if self.train_text and self.training:
            return self._encode_sampled(rows)
        if self._text_cache is None or self._text_cache.device != self.logit_scale.device:
            # eval mode: a text encoder with dropout (Hugging Face BERTs) would bake one random
            # dropout draw into the cached class embeddings
            with torch.no_grad(), torch.autocast(self.logit_scale.device.type, enabled=False), \
                    evaluating(self.backbone):
                self._text_cache = self._encode_label_space().float()
        return self._text_cache if rows is None else self._text_cache[rows]

    def set_label_space(self, names: Sequence[str], templates: Sequence[Sequence[str]]) -> None:
        """Score label space ``names`` (``templates`` per row) from now on; the text head embeds
        any names (a linear head is re-indexed by :func:`vlcofit.run.model.relabel`)."""
        self.class_names = list(names)
        self.class_templates = [tuple(t) for t in templates]
        self._tokens = None
        self.refresh_text_cache()

    def refresh_text_cache(self) -> None:
        """Forget cached class embeddings (after loading weights or a training step of the text tower)."""
        self._text_cache = None

    def _encode_label_space(self) -> torch.Tensor:
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, templates in enumerate(self.class_templates):
            groups.setdefault(templates, []).append(row)
        out = None
        for templates, rows in groups.items():
            emb = class_embeddings(self.backbone, [self.class_names[r] for r in rows], templates)
            if out is None:
                out = emb.new_zeros(len(self.class_names), emb.shape[1])
            out = out.index_copy(0, torch.tensor(rows, device=emb.device), emb)
        return out

    def seed_text_draws(self, *key: int) -> None:
        """Draw the templates of the following ``_encode_sampled`` calls from a CPU generator
        seeded from ``key`` (the trainer, before each step: seed, step, process index). Being a
        function of the step alone, a resumed run draws what the uninterrupted one did; torch's
        global RNG would not (a resumed run's first step also draws the data loader's seed from
        it). Never called: the global RNG."""
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])
        self._draws = torch.Generator().manual_seed(seed)

    def _encode_sampled(self, rows: torch.Tensor | Sequence[int] | None) -> torch.Tensor:
        """Training the text tower (ActionCLIP / ViFi-CLIP): label-space ``rows`` [R] -> unit
        embeddings [R, E] of each row's class name under ONE of its templates, drawn uniformly
        per row and call (``seed_text_draws``). The draw is on the CPU (the same on any device)
        and the pick gathered on the device from pre-tokenised prompts: the host never waits
        for the GPU."""
        device = self.logit_scale.device
        tokens, first, count = self._prompt_tokens(device)
        rows = torch.arange(len(first), device=device) if rows is None else \
            torch.as_tensor(rows, device=device).long()
        u = torch.rand(rows.shape[0], generator=self._draws).to(device, non_blocking=True)
        n = count[rows]
        pick = first[rows] + torch.minimum((u * n).long(), n - 1)  # u * n can round up to n
        return F.normalize(self.backbone.encode_text(tokens[pick]), dim=-1)

    def _prompt_tokens(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Every (row, template) prompt, tokenised once: tokens [P, L] (row r's prompts at
        ``first[r]`` to ``first[r] + count[r] - 1``), first [C], count [C], on ``device``."""
        if self._tokens is None or self._tokens[0].device != device:
            texts = [t.format(name) for name, ts in zip(self.class_names, self.class_templates)
                     for t in ts]
            count = torch.tensor([len(ts) for ts in self.class_templates])
            tokens = self.backbone.tokenize(texts)
            self._tokens = tuple(x.to(device) for x in (tokens, count.cumsum(0) - count, count))
        return self._tokens

    # ------------------------------------------------------------------ scoring

    def score(self, emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, E] x class embeddings [C, E] -> logits [B, C] = scale * cos (+ bias)."""
        logits = self.logit_scale.exp() * F.normalize(emb, dim=-1) @ text.to(emb.dtype).t()
        return logits if self.logit_bias is None else logits + self.logit_bias

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class logits [B, C] -> probabilities as the model was trained: softmax over the
        classes, or each class's own sigmoid (SigLIP: they need not sum to 1)."""
        return logits.float().sigmoid() if self.sigmoid else logits.float().softmax(dim=-1)

    def score_parameter_names(self) -> set[str]:
        """The scale (and bias) of clip-level scores: trained by every text-scored loss."""
        return {"logit_scale"} | ({"logit_bias"} if self.logit_bias is not None else set())

    def classify(self, emb: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Video embeddings [B, E] -> logits [B, C] over label-space ``rows`` (all if None)."""
        if self.linear is not None:
            logits = self.linear(emb)
            return logits if rows is None else logits[:, rows]
        return self.score(emb, self.class_matrix(rows))

    def box_logits(self, token_map: torch.Tensor, boxes: torch.Tensor, box_batch: torch.Tensor,
                   rows: torch.Tensor | None = None, text: torch.Tensor | None = None,
                   context: torch.Tensor | None = None) -> torch.Tensor:
        """Person boxes [K, 4] (normalised; sample index ``box_batch`` [K]) pooled from the token
        map [B, D, T, h, w] (plus the clip embeddings ``context`` [B, E]) -> multi-label logits
        [K, C] against label-space ``rows`` (or any class embeddings ``text`` [C, E])."""
        if self.box_head is None:
            raise RuntimeError("this model has no box head (no localisation dataset in its config)")
        if token_map is None:
            raise InputError("model: this image tower gives no square patch-token map, which "
                             "localisation (box pooling) needs: use a ViT or CNN tower")
        if text is None:
            text = self.class_matrix(rows)
        return self.box_head.logits(self.box_head(token_map, boxes, box_batch, context), text)

    def forward(self, video: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                head: Callable[[VideoCLIP, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                call: Callable[[VideoCLIP], object] | None = None):
        """[B, T, 3, H, W] -> ``head(self, video embedding [B, E], token map [B, D, T, h, w])``,
        by default the clip logits [B, C] over label-space ``rows``. Each task passes its own
        head (:mod:`vlcofit.tasks`), so the model knows no task, and training still goes
        through ``forward`` (as DDP needs, to synchronise gradients).

        ``call`` instead of a video: return ``call(self)``, evaluation code run where a sharding
        wrapper has gathered the parameters (:func:`vlcofit.train.accelerator.inside`)."""
        if call is not None:
            return call(self)
        emb, token_map = self.encode_video(video)
        if head is None:
            return self.classify(emb, rows)
        return head(self, emb, token_map)


def build_model(cfg: ModelConfig, class_names: Sequence[str],
                class_templates: Sequence[Sequence[str]], with_boxes: bool = False) -> VideoCLIP:
    # model.init_from's weights load next (training, advise): a random build is expected
    with weights_follow() if cfg.init_from else contextlib.nullcontext():
        backbone = build_backbone(cfg)
    model = VideoCLIP(backbone, cfg, class_names, class_templates)
    if cfg.grad_checkpointing:
        model.backbone.set_grad_checkpointing(True)
    if cfg.compile:
        compile_image_blocks(model)
    if with_boxes:
        model.box_head = BoxHead(model.backbone.width, model.backbone.embed_dim,
                                 temporal=cfg.box_temporal)
    model.clamp_logit_scales()  # e.g. OpenAI's stored 4.6052 > ln 100
    return model


def stored_shape(shape) -> tuple[int, ...]:
    """A tensor shape as compared between a file and the model: checkpoints written before
    the scales became one-element vectors hold them as scalars."""
    return tuple(shape) or (1,)


def _scalars_as_vectors(module: VideoCLIP, state_dict, prefix, *args) -> None:
    """load_state_dict pre hook: a saved scalar loads into its one-element parameter."""
    own = {prefix + n for n, p in module.named_parameters() if p.shape == (1,)}
    for key in [k for k, v in state_dict.items() if k in own and v.ndim == 0]:
        state_dict[key] = state_dict[key].reshape(1)


def compile_image_blocks(model: VideoCLIP) -> None:
    """``model.compile``: torch.compile each image-tower block in place. A deep copy of a
    compiled module would still run the original's blocks: compile copies, not originals."""
    for block in model.backbone.image_blocks():
        block.compile()


def _clamp_after_load(module: VideoCLIP, incompatible_keys) -> None:
    """load_state_dict post hook: a loaded scale above its cap is brought into range."""
    module.clamp_logit_scales()
