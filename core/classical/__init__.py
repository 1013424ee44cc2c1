"""The paper's classical models: hand-made features, an optional PCA, and logistic regression,
a decision tree or an SVM, searched by cross-validation.

    from core.classical import ClassicalConfig, train_classical
    exp_id = train_classical("../shared/abid-sample", ClassicalConfig("hog", "svc"), store=store)

Modules: `features` (raw pixels, HOG, LoG blobs, PCA), `models` (estimators and grids),
`search` (grid search and selection rules), `config` (an experiment's configuration),
`experiment` (training runs), `predictor` (saving, loading and serving), `suites` (the paper's
tables, the default suite).
"""
from core.classical.config import ClassicalConfig
from core.classical.experiment import FAMILY, train_classical
from core.classical.suites import SUITES, results_table, suite_experiments

__all__ = ["FAMILY", "SUITES", "ClassicalConfig", "results_table", "suite_experiments", "train_classical"]
