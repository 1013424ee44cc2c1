"""binsight's core, grouped by job. Imports go one way, from the top of this list down:

- `core.reconcile`: bins checked against their recorded quantity, batches, recounts, suspect labels;
  beside it, `core.analysis`: what runs say side by side (levers screened, what more photos buy);
- `core.counting`: the counting service (any finished model, calibrated, under a stated prior),
  and per-count trust;
- `core.training`: what `make run` trains, and the clean-up of caches no experiment uses;
- `core.cnn`, `core.classical`: the two model families, each trained, stored and loaded;
- `core.runs`: what every training run does around its model (lifecycle in the store, folds);
- `core.data`: photo collections, their index, the image cache, downloads, prepared data sets;
- `core.store`: the experiment store, its records, folder layout, locks and atomic files;
- `core.evaluation`: figures, priors and calibration, pure functions of probabilities and labels;
- `core.config`: where things are kept.

`tests/test_imports.py` fails on an import that goes back up this list, or on a circle.
"""
import os

# Several processes share few cores here. PyTorch's OpenMP threads busy-wait by default, and a
# busy-waiting thread that shares its core with another process made each training step 40x
# slower (5.2 s instead of 0.12 s). The runtime reads this once, when torch loads: hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
