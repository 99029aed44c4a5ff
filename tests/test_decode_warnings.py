"""A warning Pillow raises decoding an image (a palette with bytes transparency, an image over its size limit) names
the image, once an image, in one line per kind of warning that counts its images: Pillow's text names no file."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from lathadapter.cache.build import build
from lathadapter.cache.encode import decode

PALETTE = "UserWarning: Palette images with Transparency expressed in bytes should be converted to RGBA images"


def _palette_png(path: Path) -> None:
    """A palette PNG whose transparency is bytes (a tRNS chunk), which Pillow warns about converting to RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("P", (8, 8))
    image.putpalette([0, 0, 0, 200, 30, 30] * 128)
    image.info["transparency"] = b"\x00\x80"
    image.save(path)


def _image(path: Path, size: int = 8, shade: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (shade, 50, 50)).save(path)


def test_decode_returns_what_pillow_warned_reading_an_image(tmp_path: Path) -> None:
    _palette_png(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning must not escape
        image, warned = decode(tmp_path / "p.png")
        assert image.mode == "RGB" and warned == (PALETTE,)
        _image(tmp_path / "plain.png")
        assert decode(tmp_path / "plain.png")[1] == ()


def test_a_build_names_the_images_pillow_warned_about_counting_them(tiny_clip, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Five palette PNGs (one line: 5 images, the first 3 named) and two images over a size limit lowered to 100
    pixels (one line: their sizes differ, the limit is the same); Python's own one-line warnings, naming no file,
    are not shown (neither from the header check of the listed images nor from decoding). Decoded in a worker
    process, which sends what it caught with each image."""
    tree = tmp_path / "pets"
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(2):
                _image(tree / part / cls / f"{i}.png", shade=40 * i)
    for i in range(4):
        _palette_png(tree / "train" / "cat" / f"p{i}.png")
    _palette_png(tree / "test" / "dog" / "p.png")
    _image(tree / "train" / "dog" / "big.png", size=12)  # 144 pixels
    _image(tree / "test" / "cat" / "big.png", size=11)  # 121 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a warning over 100, an error over 200
    said: list[str] = []
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        build(None, f"folder:{tree}", tmp_path / "c.h5", model=str(tiny_clip.config),
              pretrained=str(tiny_clip.checkpoint), shots=[1], seeds=[1], views=1, device="cpu", workers=1,
              full_train=True, progress=False, log=said.append)
    assert [w for w in escaped if issubclass(w.category, (Image.DecompressionBombWarning, UserWarning))] == []
    assert [line for line in said if "Palette" in line or "pixels" in line] == [
        f"warning: 5 images: {PALETTE} (first 3: train/cat/p0.png, train/cat/p1.png, train/cat/p2.png ...)",
        "warning: 2 images: DecompressionBombWarning: Image size (N pixels) exceeds limit of 100 pixels, could be "
        "decompression bomb DOS attack. (train/dog/big.png, test/cat/big.png)",
    ]


def test_one_image_is_named_with_its_warning_as_pillow_wrote_it(tiny_clip, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "pets"
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            _image(tree / part / cls / "0.png")
    _image(tree / "test" / "dog" / "big.png", size=12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    said: list[str] = []
    build(None, f"folder:{tree}", tmp_path / "c.h5", model=str(tiny_clip.config), pretrained=str(tiny_clip.checkpoint),
          shots=[1], seeds=[1], views=1, device="cpu", workers=0, progress=False, log=said.append)
    assert [line for line in said if "pixels" in line] == [
        "warning: test/dog/big.png: DecompressionBombWarning: Image size (144 pixels) exceeds limit of 100 pixels, "
        "could be decompression bomb DOS attack."]
