"""DDP on two CPU processes (gloo): training agrees, sharded evaluation equals one process's, resume
takes rank 0's checkpoint; and the file lock that orders cache building before the group exists."""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from core.cnn.backbones import build_model
from core.cnn.evaluate import score
from core.cnn.loop import Split, Trainer, TrainingData
from core.cnn.recipes import get_recipe
from core.cnn.runtime import Runtime, first_alone, setup_runtime, shutdown

WORLD = 2
SIZE = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> tuple[TrainingData, Split]:
    """16 photos: 8 train, 5 validation and 3 test, so two ranks get shares of unequal size."""
    rng = np.random.default_rng(0)  # the same data on every rank; samplers split it
    images = rng.integers(0, 256, size=(16, SIZE, SIZE, 3), dtype=np.uint8)
    counts = np.arange(16) % 6
    train, val, test = (Split(np.arange(a, b), counts[a:b]) for a, b in ((0, 8), (8, 13), (13, 16)))
    return TrainingData(lambda size: images, train, val, 6), test


def _one(split: Split) -> Split:
    return Split(split.rows[:1], split.counts[:1])


def _recipe(epochs: int):
    return get_recipe("quick", {"phases": [{"epochs": epochs, "image_size": SIZE, "lr": 0.05}], "batch_size": 4,
                                "optimizer": "sgd", "schedule": "constant", "warmup_epochs": 0, "patience": 5})


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


class _Recording(Trainer):
    """Notes the weights after each training epoch on every rank (`on_epoch` runs on rank 0 alone)."""

    trained: list[torch.Tensor]

    def _train_epoch(self, *args):
        values = super()._train_epoch(*args)
        self.trained.append(_flat(self.model))
        return values


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      CUDA_VISIBLE_DEVICES="")  # CPU and gloo, even where a GPU is (one GPU cannot host two ranks)
    runtime = setup_runtime()
    try:
        data, test = _data()
        torch.manual_seed(rank)  # different heads: DDP must start every rank from rank 0's weights
        model = runtime.prepare(build_model(_recipe(1).backbone, 6, pretrained=False)[0])
        computed: list[int] = []
        out = {"initial": _flat(model), "epochs": {},
               "on_main": (runtime.on_main(lambda: computed.append(rank) or rank), computed)}
        run = Path(folder) / "run"
        trainer = Trainer(model, _recipe(1), data, runtime, run, progress=False)
        state = trainer.fit(on_epoch=lambda e, v: out["epochs"].update({e: v}))
        out.update(weights=_flat(model), state=asdict(state), model=model.state_dict(),
                   val=trainer.predict(data.val, SIZE), test=trainer.predict(test, SIZE),
                   one=trainer.predict(_one(test), SIZE))  # rank 1's share is empty
        # Resume with one more epoch: rank 0 from its checkpoint, rank 1 from an empty folder of its own,
        # so it can only continue in step by taking rank 0's checkpoint.
        resumed = {"epochs": {}}
        trainer = _Recording(model, _recipe(2), data, runtime, run if rank == 0 else Path(folder) / "elsewhere",
                             progress=False)
        trainer.trained = []
        state = trainer.fit(on_epoch=lambda e, v: resumed["epochs"].update({e: v}))
        out["resumed"] = {**resumed, "state": asdict(state), "trained": trainer.trained}
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        shutdown(runtime)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(_free_port(), str(folder)), nprocs=WORLD, join=True)
    return folder


@pytest.fixture(scope="module")
def ranks(spawned) -> tuple[dict, dict]:
    return tuple(torch.load(spawned / f"rank{r}.pt", weights_only=False) for r in range(WORLD))


def test_two_gloo_processes_take_a_step_and_agree(ranks):
    r0, r1 = ranks
    assert not torch.equal(r0["initial"], r1["initial"])  # they did start apart
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["weights"], r0["initial"])  # and a step was taken
    assert r0["state"] == r1["state"] and r0["state"]["epoch"] == 1  # rank 0's progress on every rank


def test_sharded_evaluation_equals_one_process_on_the_same_weights(ranks):
    r0, r1 = ranks
    data, test = _data()
    model = build_model(_recipe(1).backbone, 6, pretrained=False)[0]
    model.load_state_dict(r0["model"])  # rank 0's best weights and BatchNorm statistics
    runtime = Runtime(torch.device("cpu"), threads=torch.get_num_threads())  # fp32 like the ranks
    single = Trainer(runtime.prepare(model), _recipe(1), data, runtime, Path("unused"), progress=False)
    for name, split in (("val", data.val), ("test", test), ("one", _one(test))):
        expected = single.predict(split, SIZE)
        assert expected.shape == (len(split.rows), 6)
        for r in (r0, r1):  # every photo once, in the split's order, on every rank
            np.testing.assert_allclose(r[name], expected, rtol=1e-5, atol=1e-6)
    # the figures logged for the epoch (computed under DDP) are one process's figures
    logged = r0["epochs"][1]
    for key, value in score(single.predict(data.val, SIZE), data.val.counts, 6).items():
        assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_on_main_computes_on_rank_0_alone_and_every_rank_gets_its_value(ranks):
    r0, r1 = ranks
    assert r0["on_main"] == (0, [0]) and r1["on_main"] == (0, [])


def test_resume_takes_rank_0s_checkpoint_on_every_rank(ranks, spawned):
    r0, r1 = ranks
    assert list(r0["resumed"]["epochs"]) == [2]
    # rank 1 had no checkpoint of its own, yet it too skipped epoch 1 and trained epoch 2 in step
    assert len(r0["resumed"]["trained"]) == len(r1["resumed"]["trained"]) == 1
    assert torch.equal(r0["resumed"]["trained"][0], r1["resumed"]["trained"][0])
    assert not torch.equal(r0["resumed"]["trained"][0], r0["weights"])
    assert r0["resumed"]["state"] == r1["resumed"]["state"] and r0["resumed"]["state"]["epoch"] == 2
    assert not (spawned / "elsewhere").exists()  # only rank 0 writes


def test_the_first_process_builds_alone_and_the_others_wait_for_it(tmp_path):
    lock, built, seen = tmp_path / "datasets.lock", tmp_path / "built", {}
    entered = threading.Event()

    def enter(name: str) -> None:
        with first_alone(lock) as first:
            seen[name] = (first, built.exists())
            if first:
                entered.set()
                time.sleep(0.3)  # a slow build
                built.touch()

    builder = threading.Thread(target=enter, args=("builder",))
    builder.start()
    entered.wait(5)
    others = [threading.Thread(target=enter, args=(f"rank{r}",)) for r in (1, 2)]
    for t in others:
        t.start()
    for t in (builder, *others):
        t.join(5)
    assert seen == {"builder": (True, False), "rank1": (False, True), "rank2": (False, True)}
    with first_alone(lock) as first:  # later on, with nobody holding the lock, a process goes straight in
        assert first
