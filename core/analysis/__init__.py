"""What runs say, side by side, from the predictions they stored: levers screened on one split,
overall and per source, with paired verdicts (`screening`), and what more photos buy, a learning
curve with its fit and extrapolation (`learning_curve`).

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.analysis.screening`: `screen`, `paired_comparison`, `screening_table`;
- `core.analysis.learning_curve`: `train_learning_curve`, `learning_curve`.
"""
