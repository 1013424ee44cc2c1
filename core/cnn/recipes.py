"""Training recipes: the paper's (SGD step decay, SGDR, Adam, freeze-then-unfreeze with
differential learning rates, progressive resizing, TTA) as named, overridable presets.

A recipe is plain data. Its `params()` dict is the experiment's configuration, so two runs
with equal params on the same data are the same experiment (reused or resumed, not redone).
What a recipe leaves to the device (its batch, and so its learning rates) is settled by
`Recipe.resolved` before a run, so the params record what the run used.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from core.cnn.backbones import BACKBONES
from core.data.sources import TRAIN_SOURCES

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "sgdr", "cosine", "constant")
CLASS_WEIGHTS = ("none", "sqrt", "balanced")
NEWER_DEFAULTS = {"frozen_stages": 0, "cpu_bf16": False, "train_source": "all", "train_share": 1.0}
MONITORS = {"val_loss": "min", "val_rmse": "min", "val_accuracy": "max", "val_balanced_accuracy": "max"}
# The batch (per process) a recipe without one trains with: the presets' learning rates were chosen at 32 on
# the 2-core CPU, where a larger batch is no faster per photo; a GPU needs 256 or more to be kept busy.
DEVICE_BATCH = {"cpu": 32, "cuda": 256}
REFERENCE_BATCH = 32  # the batch the phases' fixed learning rates are for (`batch_lr_scale`)


def batch_lr_scale(optimizer: str, batch: int) -> float:
    """How much a fixed learning rate chosen at `REFERENCE_BATCH` grows at a (global) batch of `batch` photos.

    SGD scales linearly (Goyal et al. 2017, "Accurate, large minibatch SGD"): k steps at lr on
    batches of B move the weights about as far as one step at k x lr on a batch of k x B, while
    the gradient noise per photo is unchanged. Adam and AdamW scale with the square root
    (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms"):
    Adam divides each step by the gradient's RMS, so the step's size does not grow with the
    batch, and only the noise, whose standard deviation falls as 1/sqrt(k), is left to match;
    linear scaling would run Adam k / sqrt(k) times too hot (2.8x at 32 -> 256). Neither rule
    holds without limit; recipes meant for large batches warm up (`warmup_epochs`).
    """
    ratio = batch / REFERENCE_BATCH
    return ratio if optimizer == "sgd" else math.sqrt(ratio)


@dataclass(frozen=True)
class Phase:
    """A stretch of training with one image size, one set of trainable layers and one optimiser.

    `lr` is the learning rate of the last layer group; None runs the LR finder at the start of
    the phase and uses its suggestion. `differential` trains early/middle/last groups at
    lr/9, lr/3 and lr (it needs `train_body`).
    """

    epochs: int
    image_size: int
    train_body: bool = True
    lr: float | None = None
    differential: bool = False


@dataclass(frozen=True)
class Recipe:
    backbone: str
    phases: tuple[Phase, ...]
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # the lr shape inside each phase
    step_epochs: int = 10  # "step": multiply by step_gamma every step_epochs
    step_gamma: float = 0.1
    restart_epochs: float = 1.0  # "sgdr": first cycle length, then x restart_mult
    restart_mult: int = 2
    warmup_epochs: float = 0.0  # linear warm-up at the start of each phase
    # photos per step and process; None: the device's (DEVICE_BATCH), settled by `resolved`
    batch_size: int | None = None
    # what the phases' fixed lrs (chosen at REFERENCE_BATCH) are multiplied by; None: `batch_lr_scale` of the global
    # batch (batch_size x processes), settled by `resolved`; 1 keeps them as they are
    lr_scale: float | None = None
    class_weights: str = "none"  # cross-entropy weights from train class frequencies
    count_weight: float = 0.0  # adds count_weight * (expected count - true count)^2 to the loss
    label_smoothing: float = 0.0
    ordinal_sigma: float = 0.0  # > 0: soft targets spread over neighbouring counts (Gaussian of this width)
    flip: bool = True  # random horizontal flips while training
    rotate: bool = False  # random 90-degree turns too (with flips: the 8 symmetries of a square bin)
    tta: bool = True  # average predictions over the image and its mirror
    monitor: str = "val_loss"  # validation metric for early stopping and for the kept weights
    patience: int = 3  # epochs without improvement that end a phase
    pretrained: bool = True
    open_top: bool = True  # bins of more than 5 items are a class of their own ("more than 5")
    lr_finder_steps: int = 100
    seed: int = 0
    # > 0: the stem and the body stages after it, this many stages in all (core.cnn.backbones.split_model), stay
    # frozen in every phase, BatchNorm statistics included; their outputs are computed once per photo, size
    # and mirror image (core.cnn.feature_cache) and the upper stages train from them
    frozen_stages: int = 0
    # train under bf16 autocast on a CPU with native bf16 too (CUDA always does; `Runtime.with_cpu_bf16_training`)
    cpu_bf16: bool = False
    # what of the train split is trained on (`core.data.dataset.Dataset.training_subset`): the photos of one
    # source ("all", "natural", "originals"), and of those a nested, stratified share: a learning curve's points
    train_source: str = "all"
    train_share: float = 1.0
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"backbone {self.backbone!r} not in {BACKBONES}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} not in {SCHEDULES}")
        if self.class_weights not in CLASS_WEIGHTS:
            problems.append(f"class_weights {self.class_weights!r} not in {CLASS_WEIGHTS}")
        if self.monitor not in MONITORS:
            problems.append(f"monitor {self.monitor!r} not in {tuple(MONITORS)}")
        if not self.phases:
            problems.append("a recipe needs at least one phase")
        for i, phase in enumerate(self.phases):
            if phase.epochs < 1 or phase.image_size < 16:
                problems.append(f"phase {i}: needs epochs >= 1 and image_size >= 16")
            if phase.differential and not phase.train_body:
                problems.append(f"phase {i}: differential learning rates need train_body")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append("batch_size must be >= 1 (or None: the device's)")
        if self.lr_scale is not None and not self.lr_scale > 0:
            problems.append("lr_scale must be > 0 (or None: from the batch)")
        if self.frozen_stages < 0:
            problems.append("frozen_stages must be >= 0")
        if self.frozen_stages and self.rotate:
            problems.append("frozen_stages caches plain and mirrored photos only: it cannot train with rotate")
        if not 0 < self.train_share <= 1:
            problems.append("train_share must be in (0, 1]")
        if self.train_source not in TRAIN_SOURCES:
            problems.append(f"train_source {self.train_source!r} not in {tuple(TRAIN_SOURCES)}")
        if problems:
            raise ValueError("invalid recipe: " + "; ".join(problems))

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def resolved(self, device_type: str, world_size: int = 1) -> Recipe:
        """This recipe as it runs on `device_type` ("cpu", "cuda") in `world_size` processes: the device's batch
        where it has none, and the learning-rate scale of the global batch where it sets none.

        Resolving a resolved recipe changes nothing. Only fixed lrs scale: an LR-finder sweep runs at the
        batch the phase trains with, so what it finds needs no scaling.
        """
        batch = self.batch_size or DEVICE_BATCH.get(device_type, DEVICE_BATCH["cpu"])
        scale = self.lr_scale if self.lr_scale is not None else batch_lr_scale(self.optimizer, batch * world_size)
        return dataclasses.replace(self, batch_size=batch, lr_scale=scale)

    def phase_lr(self, phase: Phase) -> float | None:
        """The phase's fixed lr as trained (scaled by `lr_scale`), or None: the LR finder's."""
        return None if phase.lr is None else phase.lr * (self.lr_scale or 1.0)

    def params(self) -> dict:
        """The configuration as stored with the experiment (notes left out: they are not config).

        Fields newer than the first recipes appear only when they differ from their default, and
        `lr_scale` only when it is not 1, so recipes from before them keep their experiment keys (on
        the CPU a resolved preset trains at batch 32 with its lrs as they are, as before the device
        default).
        """
        params = dataclasses.asdict(self)
        params.pop("notes")
        for newer in ("frozen_stages", "cpu_bf16", "train_source", "train_share"):
            if params[newer] == NEWER_DEFAULTS[newer]:
                params.pop(newer)
        if params["lr_scale"] in (None, 1.0):
            params.pop("lr_scale")
        return params


def phase_sizes(params: dict) -> set[int]:
    """The image sizes the phases of a stored recipe (`Recipe.params`) train at; none for other params."""
    return {p["image_size"] for p in params.get("phases", []) if isinstance(p, dict) and "image_size" in p}


def with_overrides(recipe: Recipe, overrides: dict | None) -> Recipe:
    """A copy of `recipe` with fields replaced; `phases` may be given as a list of dicts."""
    if not overrides:
        return recipe
    overrides = dict(overrides)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise ValueError(f"unknown recipe fields: {sorted(unknown)}")
    if "phases" in overrides:
        overrides["phases"] = tuple(p if isinstance(p, Phase) else Phase(**p) for p in overrides["phases"])
    return dataclasses.replace(recipe, **overrides)


def _paper_sgd(backbone: str) -> Recipe:
    return Recipe(backbone, (Phase(30, 224, lr=0.1),), optimizer="sgd", weight_decay=1e-4,
                  schedule="step", step_epochs=10, step_gamma=0.1, monitor="val_loss", patience=5,
                  notes="SGD + momentum, lr 0.1 divided by 10 every 10 epochs, 224 px")


def _staged(backbone: str, optimizer: str, schedule: str, lr: float, weight_decay: float) -> Recipe:
    """Freeze-then-unfreeze with differential lrs and progressive resizing 64 -> 128 -> 224.

    With "sgdr", each 7-epoch phase holds cycles of 1, 2 and 4 epochs.
    """
    phases = (
        Phase(2, 64, train_body=False, lr=lr),
        Phase(7, 64, differential=True, lr=lr),
        Phase(7, 128, differential=True, lr=lr),
        Phase(7, 224, differential=True, lr=lr),
    )
    return Recipe(backbone, phases, optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
                  restart_epochs=1, restart_mult=2, monitor="val_loss", patience=4,
                  notes=f"{optimizer} + {schedule}: head first, then unfreeze at lr/9, lr/3, lr; 64->128->224 px")


# under 10 minutes on the 2-core CPU with the shared sample (about 5 when the machine is quiet);
# settings chosen on the validation split: balanced class weights lift balanced accuracy
# (0.33 -> 0.42 on val), ordinal targets + the expected-count term keep the RMSE down
QUICK = Recipe(
    "efficientnet_lite0",
    (Phase(1, 128, train_body=False, lr=3e-3),
     Phase(2, 128, differential=True, lr=1e-3),
     Phase(3, 160, differential=True, lr=5e-4)),
    optimizer="adamw", weight_decay=1e-2, schedule="cosine", warmup_epochs=0.2,
    class_weights="balanced", ordinal_sigma=1.0, count_weight=0.5, monitor="val_loss", patience=5,
    notes="EfficientNet-Lite0: head 1 epoch, then unfrozen at lr/9, lr/3, lr; 128 -> 160 px; "
          "balanced, ordinal counting loss")


def _paper_full() -> Recipe:
    """The paper's full experiment, for a GPU and all of ABID: the whole network trained at 224 px for 20 epochs
    with Adam(W) and all eight symmetries of the square bin (mirror + quarter turns).

    The paper trained ResNet34 with Adam at lr 1e-3 (Table III); this is EfficientNet-Lite0, whose
    ImageNet weights load offline, with that lr at the reference batch of 32, the body at
    lr/9 and lr/3 in its early and middle groups, a one-epoch warm-up and a cosine decay, and
    binsight's counting loss (as `quick`). On CUDA it trains at batch 256 a process
    (`DEVICE_BATCH`), its lrs x sqrt(256 N / 32) for N processes (`batch_lr_scale`).

    What it costs: a projection from rates, not a measurement of this code. The paper's
    324,000 training photos x 20 epochs = 6.48 M photos trained on.
    - One H200: a plain GPU-resident loop (Lite0, 224 px, bf16, batch 256, AdamW, mirror and turns
      on the GPU) ran 5,800-6,050 img/s once warm (issue #26, 2026-12-04): 6.48 M / 6,050 = 1,071 s
      to 6.48 M / 5,800 = 1,117 s, 18-19 minutes. At 0.8x that loop (4,640-4,840 img/s, the goal
      for this code) 1,339-1,397 s, 22-23 minutes. At the 317 img/s measured for binsight's loop
      before this input path (`accurate`, shared GPU), 20,400 s: 5.7 hours.
    - Validation adds, per epoch, two forward passes (TTA) over a validation split 2/7 the size
      of the training split (70/20/10 split): 92,600 photos. A forward pass costs about a third
      of a training step, so about 0.19 epochs of training: about 3.4 more minutes over 20
      epochs at 6,050 img/s (an estimate: evaluation rates were not measured).
    - N GPUs (`torchrun --nproc_per_node N train.py cnn --preset paper-full`, NCCL): each process
      trains and validates its 1/N share at batch 256, so time / N, less the gradient all-reduce
      each step: Lite0's 3.4 M parameters are 14 MB of fp32 gradients, well under a millisecond
      on NVLink against about 43 ms a step (256 photos at 6,000 img/s). On 8 H200s: 6.48 M /
      (8 x 6,050) = 134 s to 6.48 M / (8 x 4,640) = 175 s, 2.2-2.9 minutes, plus validation.
      The global batch is then 2,048 and the top lr 8e-3; set `lr_scale` to hold it lower.
    - Not in these figures: decoding ABID into the 224 px image cache once (about 80 GB for all
      536,000 photos), cuDNN's autotuning in each fresh process (tens of seconds), and reading
      the cache at 6,000 x 150 KB = 900 MB/s, which needs it in the page cache or on fast disk.
    """
    return Recipe("efficientnet_lite0", (Phase(20, 224, differential=True, lr=1e-3),),
                  optimizer="adamw", weight_decay=1e-2, schedule="cosine", warmup_epochs=1.0,
                  class_weights="balanced", ordinal_sigma=1.0, count_weight=0.5, flip=True, rotate=True,
                  monitor="val_loss", patience=5,
                  notes="EfficientNet-Lite0, the whole network 20 epochs at 224 px (lr/9, lr/3, lr), AdamW lr 1e-3 "
                        "at batch 32, scaled with the batch; mirror + quarter turns; for a GPU (about 20 minutes "
                        "on one H200 for 324,000 photos, projected)")


PRESETS: dict[str, Recipe] = {
    # Table III of the paper
    "resnet18-sgd": _paper_sgd("resnet18"),
    "resnet34-sgd": _paper_sgd("resnet34"),
    "resnet34-sgdr": _staged("resnet34", "sgd", "sgdr", lr=0.01, weight_decay=1e-4),
    "resnet34-adam": _staged("resnet34", "adam", "cosine", lr=1e-3, weight_decay=1e-4),
    "resnet50-adam": _staged("resnet50", "adam", "cosine", lr=1e-3, weight_decay=1e-4),
    # the same recipes on EfficientNet-Lite0, whose ImageNet weights load offline
    "effnet-sgdr": _staged("efficientnet_lite0", "sgd", "sgdr", lr=0.01, weight_decay=1e-4),
    "effnet-adam": _staged("efficientnet_lite0", "adam", "cosine", lr=1e-3, weight_decay=1e-4),
    "quick": QUICK,
    # opt-in, about 5x the compute of `quick`: the same network and loss trained longer, at up to
    # 224 px, where small items keep more pixels
    "accurate": dataclasses.replace(
        QUICK,
        phases=(Phase(1, 160, train_body=False, lr=3e-3),
                Phase(4, 192, differential=True, lr=1e-3),
                Phase(6, 224, differential=True, lr=5e-4)),
        notes="EfficientNet-Lite0 as quick, 11 epochs: head 1, then unfrozen 160 -> 192 -> 224 px; "
              "about 5x quick's time"),
    # `make run`'s CNN: quick with its stem and first three blocks frozen, trained from their cached outputs,
    # and one epoch fewer at 160 px, so the whole default suite fits 20 minutes here on the 9,734-photo sample
    # (6 epochs: validation balanced accuracy 0.476 after epoch 6 against 0.471 after 5, 146 s an epoch).
    # Plain cross-entropy, not quick's ordinal soft targets: those teach a one-item bin that it is "empty" with
    # probability 0.27, and the balanced weight of the rare empty bins (1 photo in 70) makes the network say so;
    # it called a third of the one-item bins empty. On the validation split (issue #27), plain cross-entropy:
    # balanced accuracy 0.476 (0.457-0.496) against 0.422 (0.403-0.441), one-item bins right 0.71 against 0.45,
    # RMSE on the paper's task 1.29 against 1.25
    "quick-frozen": dataclasses.replace(
        QUICK, frozen_stages=4, ordinal_sigma=0.0, count_weight=0.0,
        phases=(Phase(1, 128, train_body=False, lr=3e-3),
                Phase(2, 128, differential=True, lr=1e-3),
                Phase(2, 160, differential=True, lr=5e-4)),
        notes="EfficientNet-Lite0 as quick, stem and blocks 1-3 frozen (trained from their cached outputs): "
              "head 1 epoch, then unfrozen at lr/9, lr/3, lr; 128 -> 160 px, 5 epochs; balanced cross-entropy"),
    # the paper's full experiment, for a GPU: see `_paper_full` for what it costs
    "paper-full": _paper_full(),
}


def get_recipe(preset: str, overrides: dict | None = None) -> Recipe:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return with_overrides(PRESETS[preset], overrides)
