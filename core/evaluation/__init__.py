"""How binsight scores and states its counts, as pure functions of probabilities and labels: every
figure with its interval (`metrics`), the prior a probability is shown under (`priors`) and the
calibration maps and decision rule (`calibration`). Nothing here reads or writes files.

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.evaluation.calibration`: `Calibration`, `decide`, `fit_calibration`;
- `core.evaluation.metrics`: `SplitFigures`, `split_figures`;
- `core.evaluation.priors`: `DEFAULT_PRIOR`, `PRIORS`, `stated_prior`, `with_prior`.
"""
