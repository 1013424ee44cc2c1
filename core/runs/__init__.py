"""What every training run does around its model, whatever the family: claim, reuse or resume it
in the store, then calibrate, score and record it (`lifecycle`); the folds of a cross-validated run
(`folds`).

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.runs.folds`: `cv_folds`, `cv_pool`;
- `core.runs.lifecycle`: `finish_cv`, `finish_single`, `run_once`.
"""
