"""CNN transfer learning for bin counting: the paper's recipes on ResNets and EfficientNet-Lite0.

    from core.cnn import PRESETS, train_cnn, find_lr, load_predictor
    exp_id = train_cnn("../shared/abid-sample", "quick", store)
"""
from core.cnn.experiment import find_lr, train_cnn
from core.cnn.predictor import load_predictor
from core.cnn.recipes import PRESETS, Phase, Recipe, get_recipe

__all__ = ["PRESETS", "Phase", "Recipe", "find_lr", "get_recipe", "load_predictor", "train_cnn"]
