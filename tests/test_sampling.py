"""Frame-index sampling: exact evaluation indices, training randomness in range and seeded."""
from __future__ import annotations

import math

import numpy as np
import pytest

from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import BatchSampler

from vlcofit.data.sampling import (
    EpochBatches, clip_at_time, dense_indices, sample_indices, tsn_indices,
)


def test_tsn_eval_centre_frames():
    assert tsn_indices(16, 8, train=False) == [[1, 3, 5, 7, 9, 11, 13, 15]]
    assert tsn_indices(30, 8, train=False) == [[1, 5, 9, 13, 16, 20, 24, 28]]
    assert tsn_indices(5, 1, train=False) == [[2]]


def test_tsn_eval_multiple_clips_shift_offsets():
    assert tsn_indices(16, 8, train=False, num_clips=2) == [
        [0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15]]


def test_tsn_short_video_repeats_frames():
    assert tsn_indices(3, 8, train=False) == [[0, 0, 0, 1, 1, 2, 2, 2]]
    train = tsn_indices(3, 8, train=True, rng=np.random.default_rng(0))[0]
    assert train == sorted(train) and set(train) <= {0, 1, 2}
    assert tsn_indices(1, 4, train=False) == [[0, 0, 0, 0]]


def test_tsn_train_one_frame_per_segment_and_seeded():
    n, t = 100, 8
    draws = [tsn_indices(n, t, True, np.random.default_rng(s))[0] for s in range(50)]
    for indices in draws:
        for k, i in enumerate(indices):
            assert math.floor(k * n / t) <= i < math.ceil((k + 1) * n / t)
    assert tsn_indices(n, t, True, np.random.default_rng(7)) == \
        tsn_indices(n, t, True, np.random.default_rng(7))
    assert len({tuple(d) for d in draws}) > 40  # actually random
    rng = np.random.default_rng(0)
    firsts = {tsn_indices(n, t, True, rng)[0][0] for _ in range(500)}
    assert firsts == set(range(13))  # every frame of segment 0 ([0, 12.5)) gets drawn


def test_dense_eval_centred_and_multiview():
    assert dense_indices(100, 8, 4, train=False) == [list(range(35, 64, 4))]
    starts = [clip[0] for clip in dense_indices(100, 8, 4, train=False, num_clips=3)]
    assert starts == [11, 35, 59]


def test_dense_short_videos():
    assert dense_indices(20, 8, 4, train=False) == [list(range(2, 17, 2))]  # stride 4 -> 2
    assert dense_indices(5, 8, 4, train=False) == tsn_indices(5, 8, train=False)
    assert dense_indices(8, 8, 4, train=False) == [list(range(8))]


def test_dense_train_random_start_in_range():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        (clip,) = dense_indices(40, 4, 3, train=True, rng=rng)
        assert np.diff(clip).tolist() == [3, 3, 3] and 0 <= clip[0] and clip[-1] < 40
        starts.add(clip[0])
    assert starts == set(range(31))


def test_sample_indices_dispatch_and_errors():
    assert sample_indices(16, 8, "tsn", train=False) == tsn_indices(16, 8, False)
    assert sample_indices(100, 8, "dense", 4, train=False) == dense_indices(100, 8, 4, False)
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_indices(16, 8, "uniform")
    with pytest.raises(ValueError, match="rng"):
        sample_indices(16, 8, "tsn", train=True)
    with pytest.raises(ValueError):
        sample_indices(0, 8, "tsn")


def test_clip_at_time():
    assert clip_at_time(2.0, 30.0, 8, 2) == [52, 54, 56, 58, 60, 62, 64, 66]
    assert clip_at_time(0.1, 30.0, 4, 2, n=100) == [0, 1, 3, 5]
    assert clip_at_time(3.3, 30.0, 4, 2, n=100) == [95, 97, 99, 99]


def test_epoch_batches_are_endless_seeded_epochs_in_the_old_order():
    """Epoch after epoch without end, item e * n + i for record i of epoch e; each epoch's order
    is what Accelerate's seedable sampler (seed + epoch) and a dropping BatchSampler gave."""
    n, batch, seed = 10, 3, 7
    batches = EpochBatches(n, batch, seed)
    assert len(batches) == 3 and batches.drop_last
    it = iter(batches)
    ours = [next(it) for _ in range(3 * 4)]  # 4 epochs
    old = SeedableRandomSampler(range(n), data_seed=seed)
    for epoch in range(4):
        old.set_epoch(epoch)
        want = [[i + epoch * n for i in b] for b in BatchSampler(old, batch, drop_last=True)]
        assert ours[3 * epoch:3 * epoch + 3] == want
    assert all(len(b) == batch for b in ours)
    first = [i for b in ours[:3] for i in b]
    assert len(set(first)) == 9 and all(0 <= i < n for i in first)  # no repeats within an epoch
    again = iter(EpochBatches(n, batch, seed))
    assert [next(again) for _ in range(6)] == ours[:6]  # seeded: the same on every process
