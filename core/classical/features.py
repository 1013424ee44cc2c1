"""The paper's hand-made image features, as scikit-learn transformers over uint8 photo batches.

Every extractor takes what the image cache and `core.data.images.load_rgb` produce, an (N, S, S, 3)
uint8 RGB array, and returns an (N, d) float32 matrix. Extractors are stateless (nothing is
learnt from the data), so they sit first in a saved Pipeline and the counting service applies
exactly the training steps to new photos. What is learnt (standardisation, PCA) are the
ordinary scikit-learn steps that follow them.

Feature matrices of a whole data set are computed once per extractor setting, over all cores,
and kept beside the image cache (`feature_matrix`).
"""
from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed
from skimage.color import rgb2gray
from skimage.feature import blob_log, canny, hog
from skimage.filters import sobel
from skimage.transform import resize
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from tqdm import tqdm

from core.cnn.backbones import backbone, build_model, input_normalization, to_model_input
from core.store.files import atomic_path

CHUNK = 64
EDGE_FILTERS = (None, "sobel", "canny")


def grey_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB (N, S, S, 3) -> float64 grey (N, size, size) in [0, 1], anti-aliased when shrinking."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (N, S, S, 3), got {images.shape}")
    out = np.empty((len(images), size, size))
    for i, img in enumerate(images):
        grey = rgb2gray(img)
        out[i] = grey if grey.shape == (size, size) else resize(grey, (size, size), anti_aliasing=True)
    return out


class ImageFeatures(TransformerMixin, BaseEstimator):
    """Base of the stateless extractors: `fit` learns nothing, `transform` maps images to rows."""

    def fit(self, images: np.ndarray, y=None) -> ImageFeatures:
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        return extract(self, images, n_jobs=1, progress=False)

    def __sklearn_is_fitted__(self) -> bool:
        return True  # stateless: usable without fit, e.g. straight from a saved pipeline

    def _features(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RawPixels(ImageFeatures):
    """The photo itself, shrunk to `size` px (grey or RGB) and flattened, scaled to [0, 1].

    Standardising to zero mean and unit variance is the `StandardScaler` step that follows,
    so that it is fitted on the training images only.
    """

    def __init__(self, size: int = 32, grey: bool = True):
        self.size = size
        self.grey = grey

    def _features(self, images: np.ndarray) -> np.ndarray:
        if self.grey:
            pixels = grey_images(images, self.size)
        else:
            # resize maps uint8 to floats in [0, 1]
            pixels = np.stack([resize(img, (self.size, self.size), anti_aliasing=True) for img in images])
        return pixels.reshape(len(images), -1).astype(np.float32)


class HogFeatures(ImageFeatures):
    """Histograms of oriented gradients (scikit-image) of the grey photo at `size` px.

    `edges` applies the paper's optional edge detection first: "sobel" (gradient magnitude)
    or "canny" (binary edge map, smoothed by `canny_sigma`).
    """

    def __init__(self, size: int = 64, orientations: int = 9, pixels_per_cell: int = 8,
                 cells_per_block: int = 2, edges: str | None = None, canny_sigma: float = 1.0):
        self.size = size
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.edges = edges
        self.canny_sigma = canny_sigma

    def _features(self, images: np.ndarray) -> np.ndarray:
        if self.edges not in EDGE_FILTERS:
            raise ValueError(f"edges must be one of {EDGE_FILTERS}, got {self.edges!r}")
        rows = []
        for grey in grey_images(images, self.size):
            if self.edges == "sobel":
                grey = sobel(grey)
            elif self.edges == "canny":
                grey = canny(grey, sigma=self.canny_sigma).astype(float)
            rows.append(hog(grey, orientations=self.orientations,
                            pixels_per_cell=(self.pixels_per_cell, self.pixels_per_cell),
                            cells_per_block=(self.cells_per_block, self.cells_per_block), block_norm="L2-Hys"))
        return np.asarray(rows, dtype=np.float32)


class BlobFeatures(ImageFeatures):
    """Laplacian-of-Gaussian blobs (scikit-image `blob_log`) summarised into a fixed-length vector.

    Per photo: the number of blobs, a histogram of blob radii, a histogram of the brightness at
    blob centres, the blobs' spatial spread (mean and standard deviation of the centres, mean
    distance to their centroid) and the share of the photo they cover. Positions and radii are
    relative to the photo's side, so the vector does not depend on `size`.
    """

    def __init__(self, size: int = 128, min_sigma: float = 1.0, max_sigma: float = 16.0, num_sigma: int = 8,
                 threshold: float = 0.05, bins: int = 8):
        self.size = size
        self.min_sigma = min_sigma
        self.max_sigma = max_sigma
        self.num_sigma = num_sigma
        self.threshold = threshold
        self.bins = bins

    def _summary(self, grey: np.ndarray) -> np.ndarray:
        blobs = blob_log(grey, min_sigma=self.min_sigma, max_sigma=self.max_sigma,
                         num_sigma=self.num_sigma, threshold=self.threshold)
        radius_edges = np.linspace(self.min_sigma, self.max_sigma, self.bins + 1) * np.sqrt(2) / self.size
        brightness_edges = np.linspace(0, 1, self.bins + 1)
        if len(blobs) == 0:
            return np.zeros(1 + 2 * self.bins + 6)
        y, x, sigma = blobs[:, 0], blobs[:, 1], blobs[:, 2]
        radius = sigma * np.sqrt(2) / self.size
        brightness = grey[y.astype(int), x.astype(int)]
        yn, xn = y / self.size, x / self.size
        spread = np.hypot(yn - yn.mean(), xn - xn.mean()).mean()
        coverage = min(1.0, float(np.sum(np.pi * radius**2)))
        return np.concatenate([
            [len(blobs)],
            np.histogram(np.clip(radius, radius_edges[0], radius_edges[-1]), radius_edges)[0],
            np.histogram(brightness, brightness_edges)[0],
            [xn.mean(), yn.mean(), xn.std(), yn.std(), spread, coverage],
        ])

    def _features(self, images: np.ndarray) -> np.ndarray:
        return np.asarray([self._summary(g) for g in grey_images(images, self.size)], dtype=np.float32)


class CappedPCA(TransformerMixin, BaseEstimator):
    """PCA with the randomized solver, keeping at most `n_components` (default the paper's 1,000).

    The cap is lowered to what the training data allows (samples and features), so the same
    setting works on a small CV fold and on the full training set.
    """

    def __init__(self, n_components: int = 1000, random_state: int = 0):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None) -> CappedPCA:
        n_samples, n_features = np.shape(X)
        self.n_components_ = int(min(self.n_components, n_samples, n_features))
        self.pca_ = PCA(self.n_components_, svd_solver="randomized", random_state=self.random_state).fit(X)
        return self

    def transform(self, X) -> np.ndarray:
        return self.pca_.transform(X)


@cache
def _frozen_network(name: str) -> torch.nn.Module:
    """An ImageNet-pretrained backbone in eval mode, once per process."""
    model, weights = build_model(name, 1000, pretrained=True)
    if weights.startswith("random init"):
        raise ValueError(f"{name} has no ImageNet weights here ({weights}); random features are no features: "
                         "use an efficientnet_lite backbone, whose weights load offline")
    return model.eval()


class CnnEmbeddings(ImageFeatures):
    """What a frozen ImageNet network sees: the pooled features its classifier reads.

    The paper's SVMs on learnt instead of hand-made features. The photos are used at the size
    the experiment's image cache holds (`image_size`); nothing is trained here.
    """

    def __init__(self, backbone: str = "efficientnet_lite0"):
        self.backbone = backbone

    def _features(self, images: np.ndarray) -> np.ndarray:
        model, captured = _frozen_network(self.backbone), []
        hook = backbone(self.backbone).head(model).register_forward_hook(
            lambda module, inputs, output: captured.append(inputs[0].flatten(1)))
        try:
            with torch.no_grad():
                model(to_model_input(torch.from_numpy(np.ascontiguousarray(images)),
                                     input_normalization(self.backbone)))
        finally:
            hook.remove()
        return captured[0].float().numpy()


EXTRACTORS: dict[str, type[ImageFeatures]] = {"raw": RawPixels, "hog": HogFeatures, "blobs": BlobFeatures,
                                              "cnn": CnnEmbeddings}


def make_extractor(name: str, **params) -> ImageFeatures:
    if name not in EXTRACTORS:
        raise ValueError(f"unknown features {name!r}; choose from {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**params)


def extract(extractor: ImageFeatures, images: np.ndarray, n_jobs: int = 1, progress: bool = False) -> np.ndarray:
    """Features of all `images`, in chunks over `n_jobs` processes (a memory map is not copied)."""
    chunks = [slice(i, i + CHUNK) for i in range(0, len(images), CHUNK)]
    if not chunks:
        raise ValueError("no images to extract features from")
    bar = tqdm(total=len(images), desc=f"{type(extractor).__name__}", unit="img", disable=not progress)
    with bar:
        if n_jobs == 1 or len(chunks) == 1:
            blocks = (extractor._features(np.asarray(images[part])) for part in chunks)
        else:
            blocks = Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(extractor._features)(images[part]) for part in chunks)
        parts = []
        for block in blocks:
            parts.append(block)
            bar.update(len(block))
    return np.concatenate(parts).astype(np.float32, copy=False)


def extractor_key(extractor: ImageFeatures) -> str:
    """Identity of an extractor setting, for file names and experiment keys."""
    blob = json.dumps({"name": type(extractor).__name__, "params": extractor.get_params()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def feature_matrix(extractor: ImageFeatures, images: np.ndarray, folder: Path, n_jobs: int = 2,
                   progress: bool = True) -> np.ndarray:
    """Features of a cached image array, computed once and kept in `folder` (beside that cache).

    `folder` must identify the image array (data set fingerprint and image size), since the file
    name only identifies the extractor setting.
    """
    target = Path(folder) / f"{type(extractor).__name__.lower()}_{extractor_key(extractor)}.npy"
    if target.exists():
        matrix = np.load(target)
        if len(matrix) == len(images):
            return matrix
    matrix = extract(extractor, images, n_jobs=n_jobs, progress=progress)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, matrix)
    return matrix
