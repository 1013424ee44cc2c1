"""The input path of training and evaluation, run on the CPU: batches of cache rows read in blocks, one ahead,
and the square's symmetries drawn on the whole batch; the same code moves them to a GPU and augments there."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.cnn.evaluate import predict
from core.cnn.inputs import BLOCK, CachedRows, DeviceBatches, block_order, random_symmetries, rank_share, training_plan
from core.cnn.runtime import Runtime

CPU = torch.device("cpu")


def _symmetries(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square (H, W, C) image: its 4 turns and theirs of its mirror image."""
    return [im.rot90(k, dims=(0, 1)) for im in (image, image.flip(1)) for k in range(4)]


def _cache(n: int, size: int = 6, seed: int = 0) -> CachedRows:
    """`n` random photos with counts, their rows in a shuffled order (as a split's rows come)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    rows = rng.permutation(n)
    return CachedRows(array, rows, rng.integers(0, 6, n))


def test_an_epoch_is_every_row_once_in_blocks_of_consecutive_rows():
    n, batch = 12 * BLOCK, 2 * BLOCK
    plan = training_plan(n, batch, seed=0, epoch=3)
    assert len(plan) == n // batch and all(len(b) == batch for b in plan)
    assert sorted(np.concatenate(plan).tolist()) == list(range(n))  # each position exactly once
    for positions in plan:  # ascending, and two whole blocks of consecutive positions
        assert np.all(np.diff(positions) > 0)
        blocks = sorted(set((positions // BLOCK).tolist()))
        assert len(blocks) == 2 and positions.tolist() == [b * BLOCK + i for b in blocks for i in range(BLOCK)]
    again = training_plan(n, batch, seed=0, epoch=3)
    assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))  # seeded
    other = training_plan(n, batch, seed=0, epoch=4)
    assert not all(np.array_equal(a, b) for a, b in zip(plan, other, strict=True))  # reshuffled each epoch
    order = block_order(21, 8, np.random.default_rng(0))  # a short last block
    assert sorted(order.tolist()) == list(range(21))


def test_a_short_last_batch_is_left_out_only_when_there_are_full_ones():
    plan = training_plan(37, 8, seed=1, epoch=0)
    assert [len(b) for b in plan] == [8] * 4 and len(set(np.concatenate(plan).tolist())) == 32
    assert [len(b) for b in training_plan(5, 8, seed=1, epoch=0)] == [5]
    with pytest.raises(ValueError, match="no photos"):
        training_plan(0, 8, seed=1, epoch=0)


def test_ranks_read_their_own_shares_and_run_the_same_number_of_steps():
    n, world = 50, 3
    order = block_order(n, 4, np.random.default_rng(0))
    shares = [rank_share(order, r, world) for r in range(world)]
    assert [len(s) for s in shares] == [17] * world  # equal: 50 photos and the first one again
    assert np.array_equal(np.concatenate(shares)[:n], order) and shares[-1][-1] == order[0]
    plans = [training_plan(n, 4, seed=0, epoch=0, rank=r, world=world, block=4) for r in range(world)]
    assert [len(p) for p in plans] == [4] * world  # the same number of steps on every rank
    assert np.array_equal(np.concatenate(plans[1]), np.sort(shares[1][:16].reshape(4, 4), axis=1).ravel())


def test_batches_are_the_planned_rows_with_their_counts_and_prefetching_changes_nothing(monkeypatch):
    data = _cache(40).by_row()
    assert np.all(np.diff(data.rows) > 0)
    plan = training_plan(len(data), 8, seed=0, epoch=0, block=4)
    plain = [(torch.from_numpy(data.array[data.rows[p]]), torch.from_numpy(data.counts[p])) for p in plan]
    read: list[int] = []
    start = DeviceBatches._start

    def counting_start(self, positions):
        read.append(len(positions))
        return start(self, positions)

    monkeypatch.setattr(DeviceBatches, "_start", counting_start)
    batches = iter(DeviceBatches(data, plan, CPU))
    first = next(batches)
    assert len(read) == 2  # the next batch was read before this one was handed out
    for (images, counts), (expected_images, expected_counts) in zip([first, *batches], plain, strict=True):
        assert images.dtype == torch.uint8 and counts.dtype == torch.int64
        assert torch.equal(images, expected_images) and torch.equal(counts, expected_counts)
    with pytest.raises(ValueError, match="outside"):
        CachedRows(data.array, np.array([40]), np.array([0]))


def test_the_symmetries_are_the_squares_and_labels_stay_with_their_photos():
    data = _cache(48, seed=1).by_row()
    plan = training_plan(len(data), 16, seed=0, epoch=0)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(3):
        for positions, (images, counts) in zip(plan, DeviceBatches(data, plan, CPU), strict=True):
            turned = random_symmetries(images, generator, flip=True, rotate=True)
            for image, count, row in zip(turned, counts, data.rows[positions], strict=True):
                which = [k for k, s in enumerate(_symmetries(torch.from_numpy(data.array[row])))
                         if torch.equal(image, s)]
                assert which, "not a symmetry of its photo"
                seen.add(which[0])
                assert count == data.counts[data.rows == row][0]  # the label of the photo it came from
    assert seen == set(range(8))
    images = torch.from_numpy(data.array[:16])
    assert torch.equal(random_symmetries(images, generator, flip=False, rotate=False), images)


def test_the_same_seed_draws_the_same_symmetries():
    images = torch.from_numpy(_cache(32).array)
    a, b = (random_symmetries(images, torch.Generator().manual_seed(7), rotate=True) for _ in range(2))
    assert torch.equal(a, b)


def test_prediction_reads_in_row_order_and_answers_in_the_splits_order():
    data = _cache(23, seed=2)  # rows out of order

    def first_pixel(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, 0, 0, :].float()

    probs = predict(nn.Identity(), data, first_pixel, Runtime(CPU), batch_size=5)
    np.testing.assert_array_equal(probs, data.array[data.rows][:, 0, 0, :])
