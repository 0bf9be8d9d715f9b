import io

import numpy as np
import pytest
from PIL import Image

from image_classifier.data.loading import UnreadableImage, find_unreadable, load_rgb


def _save(path, image, **kw):
    image.save(path, **kw)
    return path


def test_transparent_png_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = load_rgb(_save(tmp_path / "a.png", rgba))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_grayscale_16bit_palette_webp(tmp_path):
    gray = Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)))
    paths = [
        _save(tmp_path / "c.jpg", gray.convert("CMYK"), quality=95),
        _save(tmp_path / "g.png", gray),
        _save(tmp_path / "i16.png", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)),
        _save(tmp_path / "p.gif", gray.convert("P")),
        _save(tmp_path / "w.webp", gray.convert("RGB"), lossless=True),
    ]
    for path in paths:
        out = load_rgb(path)
        assert out.mode == "RGB" and out.size == (16, 16), path
        row = np.asarray(out)[0, :, 0].astype(int)
        assert abs(row[-1] - 240) <= 12 and abs(row[0]) <= 12, (path, row)


def test_exif_rotation_is_applied(tmp_path):
    wide = Image.new("RGB", (20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_rgb(_save(tmp_path / "r.jpg", wide, exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_truncated_and_garbage_files_raise(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buffer.getvalue()[:200])
    (tmp_path / "g.png").write_bytes(b"garbage")
    for name in ("t.jpg", "g.png"):
        with pytest.raises(UnreadableImage, match=name):
            load_rgb(tmp_path / name)
    good = _save(tmp_path / "ok.png", Image.new("RGB", (4, 4)))
    bad = find_unreadable([good, tmp_path / "t.jpg", tmp_path / "g.png"])
    assert set(bad) == {tmp_path / "t.jpg", tmp_path / "g.png"}


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableImage):
        load_rgb(_save(tmp_path / "big.png", Image.new("L", (100, 100))))
