"""Feature-cache benchmark: re-scoring a dataset with a new prompt file or template set, against
the first (decoding) zero-shot pass, as a ratio.

Writes ``--videos`` distinct camera-like h264 videos (320x240, 30 fps, ``--seconds`` long, GOP
250, like Kinetics clips) and a ``path,label`` manifest of ``--rows`` rows cycling over them
(labels: the demo classes), then times whole :func:`vlcofit.protocols.zeroshot.run_zero_shot` calls in
one process (model construction, weight fingerprint, text embeddings and scoring included;
Python start-up and imports not):

- ``first pass``: empty cache, every video decoded and encoded (the baseline);
- ``no cache``: the same pass again with the cache off (what re-scoring costs without it);
- ``new prompt file``: the classes reordered plus distractor names, cache hit;
- ``new templates``: CLIP's 28 Kinetics templates instead of Text4Vis's one, cache hit.

    python bench/zero_shot_cache.py [--rows 256] [--videos 8] [--seconds 10] [--model tiny]

The ratio shrinks as the dataset grows: the first pass is linear in the number of videos, a
re-score is mostly fixed cost (model construction) plus a matrix product.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from decode import FPS, HEIGHT, WIDTH, make_videos  # bench/decode.py: the same camera-like videos

from vlcofit.config.schema import ModelConfig
from vlcofit.data.synthetic.clips import DEMO_CLASSES
from vlcofit.protocols.zeroshot import run_zero_shot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=256, help="videos in the manifest")
    p.add_argument("--videos", type=int, default=8, help="distinct video files")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--model", default="tiny", help="open_clip architecture or model JSON")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    model = ModelConfig(name=args.model, temporal="mean")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        videos = make_videos(root, args.videos, args.seconds)
        manifest = root / "data.csv"
        manifest.write_text("path,label\n" + "".join(
            f"{videos[i % len(videos)].name},{DEMO_CLASSES[i % len(DEMO_CLASSES)]}\n"
            for i in range(args.rows)))
        new_prompts = root / "new_prompts.txt"
        new_prompts.write_text("\n".join(["juggling", "knitting", *DEMO_CLASSES[::-1]]) + "\n")
        print(f"{args.rows} videos ({args.videos} distinct files, {WIDTH}x{HEIGHT}, {args.seconds} s, "
              f"{FPS} fps), {args.frames} frames each, model {args.model}; "
              f"data written in {time.perf_counter() - start:.1f} s\n")
        common = dict(num_frames=args.frames, batch_size=args.batch_size,
                      num_workers=args.workers)
        cache = root / "features"
        passes = [("first pass (decode + encode)", "demo", "text4vis", cache),
                  ("no cache (second full pass)", "demo", "text4vis", None),
                  ("new prompt file, cached", str(new_prompts), "text4vis", cache),
                  ("new templates (28), cached", "demo", "clip_kinetics", cache)]
        rows = []
        for name, prompts, templates, store in passes:
            start = time.perf_counter()
            result = run_zero_shot(model, str(manifest), prompts, templates, cache=store, **common)
            rows.append((name, time.perf_counter() - start, result.info["feature_cache"]["hit"]))
        base = rows[0][1]
        print(f"{'pass':<32} {'time (s)':>9} {'cache hit':>10} {'vs first pass':>14}")
        for name, seconds, hit in rows:
            print(f"{name:<32} {seconds:9.2f} {str(hit):>10} {100 * seconds / base:13.2f} %")


if __name__ == "__main__":
    main()
