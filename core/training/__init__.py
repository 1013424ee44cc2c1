"""What binsight trains and keeps: the default experiments `make run` trains (`suite`) and the
removal of image caches no experiment uses (`cleanup`, `train.py gc`).

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.training.cleanup`: `collect_garbage`;
- `core.training.suite`: `run_default_suite`.
"""
