"""Feature extractors: shapes, what they respond to, PCA's cap, and the on-disk feature cache."""
from __future__ import annotations

import joblib
import numpy as np
import pytest
from skimage.feature import hog
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from core.classical import features
from core.classical.features import (
    BlobFeatures,
    CappedPCA,
    CnnEmbeddings,
    HogFeatures,
    RawPixels,
    extract,
    feature_matrix,
    grey_images,
    make_extractor,
)
from core.data.synthetic import bin_photo


def photos(n: int = 6, size: int = 48) -> np.ndarray:
    return np.stack([np.asarray(bin_photo(k % 4, seed=k, size=(size, size))) for k in range(n)])


def dark_with_squares(centres: list[tuple[int, int]], size: int = 64, half: int = 3) -> np.ndarray:
    img = np.full((size, size, 3), 20, np.uint8)
    for y, x in centres:
        img[y - half:y + half, x - half:x + half] = 240
    return img


def test_grey_images_shrinks_to_unit_range_and_rejects_non_rgb():
    grey = grey_images(photos(3, 48), 16)
    assert grey.shape == (3, 16, 16)
    assert 0 <= grey.min() and grey.max() <= 1
    with pytest.raises(ValueError, match="RGB"):
        grey_images(np.zeros((2, 16, 16), np.uint8), 8)


def test_raw_pixels_flatten_and_standardise_on_train_only():
    train, test = photos(8), photos(4) // 2
    raw = RawPixels(size=12)
    assert raw.transform(train).shape == (8, 144)
    assert RawPixels(size=12, grey=False).transform(train).shape == (8, 432)
    pipe = Pipeline([("features", raw), ("scale", StandardScaler())]).fit(train)
    np.testing.assert_allclose(pipe.transform(train).mean(axis=0), 0, atol=1e-5)
    assert pipe.transform(test).mean() < -0.5  # darker test photos: scaled with the train statistics


def test_hog_matches_scikit_image_and_edges_change_it():
    images = photos(2, 64)
    plain = HogFeatures(size=64).transform(images)
    expected = hog(grey_images(images[:1], 64)[0], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                   block_norm="L2-Hys")
    np.testing.assert_allclose(plain[0], expected, rtol=1e-5, atol=1e-6)
    assert plain.shape == (2, 7 * 7 * 2 * 2 * 9)
    for edges in ("sobel", "canny"):
        with_edges = HogFeatures(size=64, edges=edges).transform(images)
        assert with_edges.shape == plain.shape and not np.allclose(with_edges, plain)
    assert not HogFeatures(size=32).transform(np.full((1, 32, 32, 3), 90, np.uint8)).any()  # flat photo: no gradients
    with pytest.raises(ValueError, match="edges"):
        HogFeatures(edges="laplace").transform(images)


def test_blob_features_count_and_place_the_bright_spots():
    blobs = BlobFeatures(size=64, max_sigma=8, num_sigma=4, threshold=0.1, bins=4)
    left = dark_with_squares([(16, 12), (48, 12)])
    spread = dark_with_squares([(12, 12), (12, 52), (52, 12), (52, 52)])
    empty = np.full((64, 64, 3), 20, np.uint8)
    rows = blobs.transform(np.stack([left, spread, empty]))
    assert rows.shape == (3, 1 + 4 + 4 + 6)
    assert rows[0, 0] == 2 and rows[1, 0] == 4
    assert not rows[2].any()  # no blob: the all-zero vector
    mean_x, spread_x = rows[:, 9], rows[:, 11]
    assert mean_x[0] < 0.3 and abs(mean_x[1] - 0.5) < 0.05
    assert spread_x[1] > spread_x[0]
    assert rows[1, 5:9].sum() == 4 and rows[1, 8] == 4  # all four centres in the brightest bin


def test_capped_pca_uses_randomized_solver_and_caps_components():
    X = np.random.default_rng(0).normal(size=(20, 50))
    pca = CappedPCA(n_components=1000).fit(X)
    assert pca.n_components_ == 20 and pca.pca_.svd_solver == "randomized"
    assert pca.transform(X).shape == (20, 20)
    assert CappedPCA(n_components=5).fit(X).transform(X).shape == (20, 5)


def test_make_extractor_knows_every_feature():
    assert isinstance(make_extractor("hog", size=32), HogFeatures)
    assert isinstance(make_extractor("blobs"), BlobFeatures)
    assert isinstance(make_extractor("cnn"), CnnEmbeddings)
    with pytest.raises(ValueError, match="unknown features"):
        make_extractor("sift")


def test_parallel_extraction_matches_serial_and_pipeline_survives_saving(tmp_path):
    images = photos(70, 32)  # more than one chunk
    extractor = HogFeatures(size=32)
    serial = extract(extractor, images, n_jobs=1)
    np.testing.assert_array_equal(extract(extractor, images, n_jobs=2), serial)
    joblib.dump(Pipeline([("features", extractor)]), tmp_path / "p.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "p.joblib").transform(images), serial)


def test_feature_matrix_is_computed_once_per_setting(tmp_path, monkeypatch):
    images = photos(5, 32)
    first = feature_matrix(RawPixels(size=8), images, tmp_path, n_jobs=1, progress=False)
    monkeypatch.setattr(features, "extract", lambda *a, **k: pytest.fail("recomputed a cached feature matrix"))
    np.testing.assert_array_equal(feature_matrix(RawPixels(size=8), images, tmp_path, progress=False), first)
    with pytest.raises(pytest.fail.Exception):
        feature_matrix(RawPixels(size=6), images, tmp_path, progress=False)  # another setting: another file


def test_cnn_embeddings_are_the_pretrained_networks_pooled_features():
    images = photos(5, 64)
    rows = CnnEmbeddings("efficientnet_lite0").transform(images)
    assert rows.shape == (5, 1280) and rows.dtype == np.float32
    assert np.isfinite(rows).all() and (rows >= 0).all()  # pooled after a ReLU6
    assert not np.allclose(rows[0], rows[1])  # different photos, different features
    np.testing.assert_allclose(CnnEmbeddings().transform(images[:2]), rows[:2], rtol=1e-4, atol=1e-5)


def test_cnn_embeddings_refuse_a_backbone_without_imagenet_weights(monkeypatch):
    import torch

    monkeypatch.setattr(features, "build_model", lambda *a, **k: (torch.nn.Identity(), "random init: offline"))
    features._frozen_network.cache_clear()
    try:
        with pytest.raises(ValueError, match="no ImageNet weights"):
            CnnEmbeddings("resnet18").transform(photos(1, 32))
    finally:
        features._frozen_network.cache_clear()
