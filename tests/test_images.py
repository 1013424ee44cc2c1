"""The one image decoder: every awkward input becomes upright RGB or a clear ImageError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.data.images import ImageError, load_rgb, open_image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_jpeg_decodes_to_rgb_at_requested_size():
    img = Image.new("RGB", (300, 200), (200, 10, 10))
    arr = load_rgb(encode(img, "JPEG"), 64)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert arr[..., 0].mean() > 150 and arr[..., 1].mean() < 60


@pytest.mark.parametrize("mode", ["L", "CMYK", "P"])
def test_other_modes_become_rgb(mode):
    img = Image.new("RGB", (40, 30), (0, 128, 255)).convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    out = open_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    out = np.asarray(open_image(encode(img, "PNG")))
    assert (out == 255).all()


def test_sixteen_bit_png_is_rescaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    out = np.asarray(open_image(encode(Image.fromarray(arr), "PNG")))
    assert 120 <= out.mean() <= 135


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = open_image(encode(img, "JPEG", exif=exif))
    assert out.size == (20, 60)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(open_image(buf.getvalue()))
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


@pytest.mark.parametrize(
    "data, message",
    [(b"", "empty"), (b"this is not an image at all", "not an image")],
)
def test_bad_bytes_raise_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        open_image(data)


def test_truncated_jpeg_raises():
    data = encode(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        open_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("1", (10_000, 6_000)), "PNG")  # 60 megapixels, tiny file
    with pytest.raises(ImageError, match="too large"):
        open_image(data)


def test_decoded_batches_keep_order_and_errors_in_place_with_or_without_workers():
    from core.data.images import decoded_batches
    from core.data.synthetic import bin_jpeg

    sources = [bin_jpeg(i % 6, seed=i) for i in range(11)]
    sources[4], sources[9] = b"not a photo", b""
    pooled = [item for batch in decoded_batches(iter(sources), 32, batch_size=3, workers=2) for item in batch]
    serial = [item for batch in decoded_batches(sources, 32, batch_size=3, workers=0) for item in batch]
    assert len(pooled) == len(serial) == 11
    for i, (a, b) in enumerate(zip(pooled, serial, strict=True)):
        if i in (4, 9):
            assert isinstance(a, ImageError) and str(a) == str(b)
        else:
            np.testing.assert_array_equal(a, load_rgb(sources[i], 32))
            np.testing.assert_array_equal(a, b)
    assert [len(batch) for batch in decoded_batches(sources, 32, batch_size=4)] == [4, 4, 3]
    with pytest.raises(ValueError, match="batch_size"):
        next(decoded_batches(sources, 32, batch_size=0))
