"""Counting bins: the service that loads any finished model and counts photos with calibrated
probabilities under a stated prior (`service`) and how often a shown count is right (`trust`).

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.counting.service`: `BinCounter`, `CountResult`, `ModelNotFound`, `load_counter`, `resolve_experiment`;
- `core.counting.trust`: `model_trust`, `trust_line`.
"""
