"""`cache build` with the tiny model: features equal open_clip's own outputs, subsets equal Dassl's, resume, safety."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import lathadapter.cache.build as build_module
from lathadapter.cache.build import BuildError, build
from lathadapter.cache.encode import augmented_views, view_seed
from lathadapter.cache.inspection import verify
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.cache.subset import export_subset
from lathadapter.cache.templates import load_attributes

SHOTS, SEEDS, VIEWS, BATCH = (1, 2), (1, 2), 2, 8
ATOL = 2e-3  # float16 storage of unit vectors


def _options(tiny_clip, **overrides: object) -> dict[str, object]:
    options: dict[str, object] = dict(model=str(tiny_clip.config), pretrained=str(tiny_clip.checkpoint), shots=SHOTS,
                                      seeds=SEEDS, views=VIEWS, batch_size=BATCH, workers=0, device="cpu",
                                      progress=False, log=lambda message: None)
    options.update(overrides)
    return options


def _build(coop_dataset, tiny_clip, out: Path, **overrides: object):
    return build(None, f"split:{coop_dataset.split_file}", out, **_options(tiny_clip, **overrides))


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same_cache(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert left.keys() == right.keys()
    for name in left:
        assert np.array_equal(left[name], right[name]), name


@pytest.fixture(scope="module")
def reference(coop_dataset, tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted build: the cache every other build is compared with."""
    out = tmp_path_factory.mktemp("reference") / "shapes.h5"
    result = _build(coop_dataset, tiny_clip, out)
    assert result.status == "built" and result.path == out
    return out


def _encode(tiny_clip, pixels: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        features = tiny_clip.model.encode_image(pixels)
    return (features / features.norm(dim=-1, keepdim=True)).numpy()


def test_clean_features_equal_open_clip_encode_image(reference: Path, coop_dataset, tiny_clip) -> None:
    with h5py.File(reference, "r") as f:
        for split in ("train", "val", "test"):
            paths = f[f"splits/{split}/paths"].asstr()[()]
            images = [Image.open(coop_dataset.folder / p).convert("RGB") for p in paths]
            expected = _encode(tiny_clip, torch.stack([tiny_clip.preprocess(image) for image in images]))
            np.testing.assert_allclose(f[f"splits/{split}/features"][()].astype(np.float32), expected, atol=ATOL)


def test_augmented_views_equal_torchvision_random_resized_crop_and_flip(reference: Path, coop_dataset,
                                                                         tiny_clip) -> None:
    normalize = tiny_clip.preprocess.transforms[-1]
    pipeline = T.Compose([T.RandomResizedCrop(32, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    with h5py.File(reference, "r") as f:
        paths = f["splits/train/paths"].asstr()[()]
        stored = f["splits/train/augmented"][()].astype(np.float32)
    for row in range(0, len(paths), 5):
        image = Image.open(coop_dataset.folder / paths[row]).convert("RGB")
        with torch.random.fork_rng():
            torch.manual_seed(view_seed(0, paths[row]))
            expected = torch.stack([pipeline(image) for _ in range(VIEWS)])
        ours = augmented_views(image, VIEWS, view_seed(0, paths[row]), (32, 32), normalize.mean, normalize.std)
        assert torch.equal(ours, expected)
        np.testing.assert_allclose(stored[row], _encode(tiny_clip, expected), atol=ATOL)
    assert not np.allclose(stored[:, 0], stored[:, 1], atol=1e-2), "the views differ from each other"


def test_text_and_attribute_features_equal_open_clip_encode_text(reference: Path, coop_dataset, tiny_clip) -> None:
    with h5py.File(reference, "r") as f:
        templates = list(f["text/templates"].asstr()[()])
        stored = f["text/features"][()].astype(np.float32)
        phrases = list(f["attributes/phrases"].asstr()[()])
        attributes = f["attributes/features"][()].astype(np.float32)
    assert templates[0] == "a photo of a {}." and len(templates) == 8
    assert phrases == load_attributes()
    with torch.no_grad():
        for t, template in enumerate(templates):
            text = tiny_clip.model.encode_text(tiny_clip.tokenizer([template.format(c) for c in coop_dataset.classes]))
            np.testing.assert_allclose(stored[t], (text / text.norm(dim=-1, keepdim=True)).numpy(), atol=ATOL)
        text = tiny_clip.model.encode_text(tiny_clip.tokenizer(phrases))
    np.testing.assert_allclose(attributes, (text / text.norm(dim=-1, keepdim=True)).numpy(), atol=ATOL)


def _dassl(split: dict[str, list[list[object]]], shots: int, seed: int) -> tuple[list[list[object]], ...]:
    """Dassl's generate_fewshot_dataset as CoOp calls it, on split-file entries."""
    random.seed(seed)
    drawn = []
    for source, k in ((split["train"], shots), (split["val"], min(shots, 4))):
        by_label: defaultdict[int, list[list[object]]] = defaultdict(list)
        for item in source:
            by_label[item[1]].append(item)
        drawn.append([x for items in by_label.values()
                      for x in (random.sample(items, k) if len(items) >= k else items)])
    return drawn[0], drawn[1]


def test_subsets_equal_dassl_on_the_split_file(reference: Path, coop_dataset) -> None:
    split = json.loads(coop_dataset.split_file.read_text())
    with CacheReader(reference) as reader:
        assert reader.subsets() == [(k, s) for k in SHOTS for s in SEEDS]
        info = reader.info()
    train_union = set()
    for shots in SHOTS:
        for seed in SEEDS:
            exported = export_subset(reference, shots, seed)
            train, val = _dassl(split, shots, seed)
            assert (exported["train"], exported["val"]) == (train, val)
            train_union |= {item[0] for item in train}
    assert info.counts["train"] == len(train_union), "train holds exactly the union of the subsets"


def test_fingerprint_records_how_the_cache_was_made(reference: Path, coop_dataset, tiny_clip) -> None:
    import open_clip

    with CacheReader(reference) as reader:
        fields = reader.info().fields
    assert fields["open_clip_version"] == open_clip.__version__
    assert fields["model"] == tiny_clip.name
    assert fields["model_config"] == json.loads(tiny_clip.config.read_text())
    assert fields["checkpoint_sha256"] == hashlib.sha256(tiny_clip.checkpoint.read_bytes()).hexdigest()
    assert fields["split_sha256"] == hashlib.sha256(coop_dataset.split_file.read_bytes()).hexdigest()
    assert fields["quick_gelu"] is False and fields["precision"] == "fp32"
    assert fields["preprocess"]["size"] == [32, 32] and fields["preprocess"]["interpolation"] == "bicubic"
    assert (fields["views"], fields["seed"], fields["shots"], fields["seeds"]) == (VIEWS, 0, [1, 2], [1, 2])
    assert fields["dataset"] == "Shapes"  # split_zhou_Shapes.json


def _failing_at(call: int, encode):
    """`encode` that raises "device lost" at its `call`-th call (a build killed part-way), and encodes otherwise."""
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError("device lost")
        return encode(*args, **kwargs)

    return failing


def test_resume_after_a_failure_encodes_only_the_missing_rows(reference: Path, coop_dataset, tiny_clip,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "shapes.h5"
    original = build_module.encode_images
    monkeypatch.setattr(build_module, "encode_images", _failing_at(4, original))
    with pytest.raises(RuntimeError, match="device lost"):
        _build(coop_dataset, tiny_clip, out)
    temporary = out.with_name("shapes.h5.tmp")
    assert temporary.is_file() and not out.exists()
    with h5py.File(temporary, "r") as f:
        left = sum(int((~f[f"splits/{s}/encoded"][()]).sum()) for s in ("train", "val", "test"))
    monkeypatch.setattr(build_module, "encode_images", original)
    result = _build(coop_dataset, tiny_clip, out)
    assert result.status == "resumed" and 0 < result.stats.images == left
    assert not temporary.exists()
    _assert_same_cache(reference, out)


def test_a_resumed_build_checks_only_the_images_it_has_left(coop_dataset, tiny_clip, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The up-front image check of a resumed build reads the images not yet encoded, not those its `.tmp` holds (all
    1.33M of ImageNet's again), and does not refuse one deleted after it was encoded."""
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    out, options = tmp_path / "small.h5", _options(tiny_clip, shots=(1,), seeds=(1,), batch_size=2)
    original = build_module.encode_images
    monkeypatch.setattr(build_module, "encode_images", _failing_at(3, original))
    with pytest.raises(RuntimeError, match="device lost"):
        build(None, f"split:{split_file}", out, **options)
    monkeypatch.setattr(build_module, "encode_images", original)
    with h5py.File(out.with_name("small.h5.tmp"), "r") as f:
        left = {str(path) for split in ("train", "val", "test") for path, done in
                zip(f[f"splits/{split}/paths"].asstr()[()], f[f"splits/{split}/encoded"][()], strict=True) if not done}
        encoded = [path for path in f["splits/train/paths"].asstr()[()] if path not in left]
    assert left and encoded
    (tmp_path / "small" / encoded[0]).unlink()  # deleted after it was encoded: not needed again
    checked: list[str] = []
    problem = build_module.image_problem
    monkeypatch.setattr(build_module, "image_problem", lambda path: checked.append(path) or problem(path))
    result = build(None, f"split:{split_file}", out, **options)
    assert result.status == "resumed" and result.stats.images == len(left)
    assert sorted(checked) == sorted(tmp_path / "small" / path for path in left)


KILL_SCRIPT = """
import os, signal, sys
import lathadapter.cache.build as b
b.FLUSH_SECONDS = 0.0
calls = [0]
write_rows = b.write_rows
def write_then_die(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    write_rows(*args, **kwargs)
b.write_rows = write_then_die
b.build(None, sys.argv[1], sys.argv[2], model=sys.argv[3], pretrained=sys.argv[4], shots=(1, 2), seeds=(1, 2),
        views=2, batch_size=8, workers=0, device="cpu", progress=False)
"""


def test_resume_after_a_killed_build_gives_the_uninterrupted_cache(reference: Path, coop_dataset, tiny_clip,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "shapes.h5"
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, f"split:{coop_dataset.split_file}", str(out),
                             str(tiny_clip.config), str(tiny_clip.checkpoint)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr
    temporary = out.with_name("shapes.h5.tmp")
    assert temporary.is_file() and not out.exists()
    assert out.with_name("shapes.h5.lock").read_text().strip().isdigit(), "the killed build left its lock file"
    with h5py.File(temporary, "r") as f:
        assert int(f["splits/train/encoded"][()].sum()) == 2 * BATCH, "two batches were written before the kill"
        left = sum(int((~f[f"splits/{s}/encoded"][()]).sum()) for s in ("train", "val", "test"))
    result = _build(coop_dataset, tiny_clip, out)
    assert result.status == "resumed" and result.stats.images == left
    assert not out.with_name("shapes.h5.lock").exists()
    _assert_same_cache(reference, out)


def test_decoding_workers_do_not_change_the_cache(reference: Path, coop_dataset, tiny_clip, tmp_path: Path) -> None:
    out = tmp_path / "workers.h5"
    _build(coop_dataset, tiny_clip, out, workers=2)
    _assert_same_cache(reference, out)


def test_rebuild_is_refused_for_another_fingerprint_unless_forced(reference: Path, coop_dataset, tiny_clip,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "shapes.h5"
    shutil.copy(reference, out)
    assert _build(coop_dataset, tiny_clip, out).status == "up to date"
    with pytest.raises(BuildError, match=r"built differently \(differs in: views\).*--force"):
        _build(coop_dataset, tiny_clip, out, views=1)
    assert _build(coop_dataset, tiny_clip, out, views=1, force=True).status == "built"
    with CacheReader(out) as reader:
        assert reader.info().views == 1
    not_a_cache = tmp_path / "notes.h5"
    not_a_cache.write_text("my notes")
    with pytest.raises(BuildError, match="not a lathadapter cache; pass --force"):
        _build(coop_dataset, tiny_clip, not_a_cache)


def _small_dataset(coop_dataset, folder: Path) -> Path:
    """Three classes of the shared dataset, copied with a split file of their own."""
    split = json.loads(coop_dataset.split_file.read_text())
    small = {part: [item for item in items if item[1] < 3][::3] for part, items in split.items()}
    for items in small.values():
        for path, _, _ in items:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(coop_dataset.folder / path, folder / path)
    (folder / "split_zhou_Small.json").write_text(json.dumps(small))
    return folder / "split_zhou_Small.json"


def test_unreadable_image_stops_the_build_unless_skip_bad(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    """An image cut short after its header opens, so only decoding it finds it: the build stops there, naming it and
    keeping its `.tmp` (not a cache), which --skip-bad resumes."""
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    bad = json.loads(split_file.read_text())["test"][1][0]
    whole_bytes = (tmp_path / "small" / bad).read_bytes()
    (tmp_path / "small" / bad).write_bytes(whole_bytes[:len(whole_bytes) // 2])
    out = tmp_path / "small.h5"
    options = _options(tiny_clip, shots=(1,), seeds=(1,))
    with pytest.raises(BuildError, match=f"cannot read image {tmp_path / 'small' / bad} \\(OSError: .*truncated.*"
                                         "--skip-bad"):
        build(None, f"split:{split_file}", out, **options)
    assert not out.exists() and out.with_name(out.name + ".tmp").exists()
    result = build(None, f"split:{split_file}", out, skip_bad=True, **options)
    assert result.status == "resumed" and result.stats.skipped == 1
    assert verify(out) == []
    with CacheReader(out) as reader:
        assert reader.info().skipped == [bad]
        paths = list(reader.file["splits/test/paths"].asstr()[()])
        assert not reader.file["splits/test/features"][paths.index(bad)].any()
        assert reader.load_test().test_labels.shape[0] == len(paths) - 1, "the reader drops the skipped image"
    # a listed image that is not there is refused before any is encoded, whichever split lists it (encoding met it
    # only when it got there: the test split's after every train view); --skip-bad skips it as unreadable
    missing = tmp_path / "missing.h5"
    whole = tmp_path / "whole.h5"  # built while every image was there
    (tmp_path / "small" / bad).write_bytes((coop_dataset.folder / bad).read_bytes())
    assert build(None, f"split:{split_file}", whole, **options).status == "built"
    (tmp_path / "small" / bad).unlink()
    # a cache built before its images were deleted (ImageNet's, to free the disk) is still up to date; rebuilding it
    # needs them
    assert build(None, f"split:{split_file}", whole, **options).status == "up to date"
    with pytest.raises(BuildError, match="1 of the images listed by the split file .* are missing"):
        build(None, f"split:{split_file}", whole, force=True, **options)
    with pytest.raises(BuildError) as raised:
        build(None, f"split:{split_file}", missing, **options)
    assert str(raised.value) == (f"1 of the images listed by the split file {split_file} are missing under "
                                 f"{tmp_path / 'small'}: {bad}; fix the split source or restore the images, or pass "
                                 "--skip-bad to leave them out (they are listed in the cache)")
    assert not missing.exists() and not missing.with_name(missing.name + ".tmp").exists()
    assert build(None, f"split:{split_file}", missing, skip_bad=True, **options).stats.skipped == 1


def test_full_train_encodes_the_whole_train_split(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    out = tmp_path / "full.h5"
    build(None, f"split:{split_file}", out, **_options(tiny_clip, shots=(2,), seeds=(1,), full_train=True))
    split = json.loads(split_file.read_text())
    with CacheReader(out) as reader:
        assert reader.file["splits/train/paths"].asstr()[()].tolist() == [p for p, _, _ in split["train"]]
        data = reader.load(2, 1)
    assert data.train_features.shape[0] == 6 and data.train_augmented.shape[1:] == (VIEWS, 32)


def _imagenet_tree(coop_dataset, root: Path, variant: bool = False) -> None:
    """A 3-class ImageNet (and a 2-class ImageNet-R) built from the shared dataset's images."""
    split = json.loads(coop_dataset.split_file.read_text())
    wnids = {0: "n01440764", 1: "n01443537", 2: "n01484850"}
    names = {wnids[label]: coop_dataset.classes[label] for label in wnids}
    for part, folder in (("train", "images/train"), ("test", "images/val")):
        for path, label, _ in split[part]:
            if label in wnids:
                target = root / "imagenet" / folder / wnids[label] / Path(path).name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(coop_dataset.folder / path, target)
    (root / "imagenet" / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in sorted(names.items())))
    if variant:
        rendition = root / "imagenet-rendition"
        for wnid in (wnids[2], wnids[0]):
            shutil.copytree(root / "imagenet" / "images" / "val" / wnid, rendition / "imagenet-r" / wnid)
        shutil.copy(root / "imagenet" / "classnames.txt", rendition / "classnames.txt")


def test_imagenet_build_has_train_subsets_only_and_keeps_wnids(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    _imagenet_tree(coop_dataset, tmp_path, variant=True)
    out = tmp_path / "imagenet.h5"
    build(tmp_path, "imagenet", out, **_options(tiny_clip, shots=(2,), seeds=(1,)))
    with CacheReader(out) as reader:
        info = reader.info()
        data = reader.load(2, 1)
    assert info.counts == {"train": 6, "val": 0, "test": 24}
    assert data.wnids == ["n01440764", "n01443537", "n01484850"]
    assert data.val_features.shape == (0, 32) and data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    rendition = tmp_path / "r.h5"
    build(tmp_path, "imagenet_r", rendition, **_options(tiny_clip))
    with CacheReader(rendition) as reader:
        assert reader.subsets() == [] and reader.info().counts == {"train": 0, "val": 0, "test": 16}
        test = reader.load_test()
        with pytest.raises(CacheError, match="holds only a test split .imagenet_r has no train split.*--target"):
            reader.load(2, 1)
    assert test.wnids == ["n01440764", "n01484850"] and sorted(set(test.test_labels.tolist())) == [0, 1]
    assert verify(rendition) == []


def test_a_split_source_whose_test_images_are_also_train_or_val_images_is_warned_about(coop_dataset, tiny_clip,
                                                                                       tmp_path: Path) -> None:
    """An image in both val and test reaches tuning and `--select val`, so its test accuracy is not held out; the
    build says so (a warning, since official split files are never regenerated), counting the shared paths."""
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    split = json.loads(split_file.read_text())
    assert build(None, f"split:{split_file}", tmp_path / "clean.h5",
                 **_options(tiny_clip, shots=(1,), seeds=(1,))).notes == []
    split["test"] += [split["val"][0], split["val"][1], split["train"][0]]
    split_file.write_text(json.dumps(split))
    said: list[str] = []
    result = build(None, f"split:{split_file}", tmp_path / "leaky.h5",
                   **_options(tiny_clip, shots=(1,), seeds=(1,), log=said.append))
    expected = [f"warning: 1 image is in both the train and the test split of Small (e.g. {split['train'][0][0]!r})",
                f"warning: 2 images are in both the val and the test split of Small (e.g. "
                f"{min(split['val'][0][0], split['val'][1][0])!r})"]
    leaks = [note for note in result.notes if " in both the " in note]
    assert [note.split(": the")[0] for note in leaks] == expected
    assert all(note in said for note in leaks)


def test_a_16_bit_image_is_encoded_as_its_8_bit_reading(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    """A 16-bit grayscale PNG holding v × 257 encodes exactly as the 8-bit image holding v (its top 8 bits); Pillow's
    convert("RGB") clipped it to pure white, silently."""
    folders = {}
    for bits in (8, 16):
        folder = tmp_path / f"gray{bits}"
        shutil.copytree(coop_dataset.folder, folder)
        for image_path in sorted(folder.rglob("*.png"))[::4]:
            gray = np.asarray(Image.open(image_path).convert("L"))
            if bits == 8:
                Image.fromarray(gray, mode="L").save(image_path)
            else:
                wide = Image.fromarray(gray.astype(np.uint16) * 257)
                assert wide.mode.startswith("I") and np.asarray(wide).max() > 255
                wide.save(image_path)
        folders[bits] = folder
    arrays = {}
    for bits, folder in folders.items():
        out = tmp_path / f"c{bits}.h5"
        build(None, f"split:{folder / coop_dataset.split_file.name}", out, **_options(tiny_clip))
        arrays[bits] = {k: v for k, v in _arrays(out).items() if k.startswith("splits/") and "paths" not in k}
    assert arrays[8].keys() == arrays[16].keys() and any("features" in k for k in arrays[8])
    for name, value in arrays[8].items():
        assert np.array_equal(value, arrays[16][name]), name


def test_every_mode_reaches_the_encoder_as_the_fields_loaders_read_it_and_exif_orientation_is_not_applied(
        tiny_clip, tmp_path: Path) -> None:
    """Grayscale, palette (with a transparent entry), CMYK and half-transparent RGBA files are read as Dassl's
    `read_image` and torchvision's `pil_loader` read them: `convert("RGB")` when loaded, then open_clip's preprocess.
    open_clip's preprocess converts only after resizing: applied to the file as it is, it resizes RGBA with
    premultiplied alpha, which turns the transparent half black. A photo's EXIF orientation is not applied, as
    none of open_clip, CLIP, Dassl or ImageFolder applies it: the stored pixels are encoded."""
    from PIL import ImageOps

    from lathadapter.cache.encode import ImageRows

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (30, 48, 3), dtype=np.uint8))
    rgba = np.asarray(photo.convert("RGBA")).copy()
    rgba[15:, :, 3] = 0
    palette = photo.convert("P")
    palette.info["transparency"] = 3
    files = {"gray.png": photo.convert("L"), "palette.png": palette, "cmyk.jpg": photo.convert("CMYK"),
             "rgba.png": Image.fromarray(rgba)}
    for name, image in files.items():
        image.save(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated 90° clockwise
    photo.save(tmp_path / "exif.jpg", exif=exif)
    paths = [*files, "exif.jpg"]
    rows = ImageRows(tmp_path, paths, range(len(paths)), tiny_clip.preprocess, 0, 0, (32, 32), (0, 0, 0), (1, 1, 1))
    for row, path in enumerate(paths):
        with Image.open(tmp_path / path) as opened:
            expected = tiny_clip.preprocess(opened.convert("RGB"))
        assert torch.equal(rows[row].clean, expected), path
    with Image.open(tmp_path / "rgba.png") as opened:
        unconverted = tiny_clip.preprocess(opened)
    assert unconverted[:, 20:].mean() < rows[paths.index("rgba.png")].clean[:, 20:].mean() - 1, "not black there"
    with Image.open(tmp_path / "exif.jpg") as opened:
        turned = tiny_clip.preprocess(ImageOps.exif_transpose(opened).convert("RGB"))
    assert not torch.allclose(rows[paths.index("exif.jpg")].clean, turned, atol=0.1)


def test_32_bit_integer_images_read_as_8_or_16_bit_by_their_values() -> None:
    """Mode I holding 0..255 reads as those 8-bit values (as Pillow's convert does), holding v × 257 as v; values
    above 16 bits and float images are unreadable (ValueError, skipped with --skip-bad)."""
    from lathadapter.cache.encode import as_rgb

    values = (np.arange(64).reshape(8, 8) * 4).astype(np.int32)
    for stored in (values, values * 257):
        rgb = np.asarray(as_rgb(Image.fromarray(stored, mode="I")))
        assert rgb.shape == (8, 8, 3) and (rgb == values[..., None]).all()
    for unreadable in (Image.fromarray(values * 65536, mode="I"), Image.fromarray(values.astype(np.float32), mode="F")):
        with pytest.raises(ValueError, match="save it as 8 or 16 bits"):
            as_rgb(unreadable)


def test_the_missing_image_check_stats_concurrently_and_names_them_in_split_order(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """Each stat is a round trip on a network file system (~0.5 ms: ImageNet's 1.33M listed images took ~11 minutes
    one at a time, silent before the first progress line), so they run several at once; the error still names the
    missing images in the order the splits list them (train, val, test)."""
    import threading
    import time
    from types import SimpleNamespace

    names = {split: [f"{split}/img_{i:03d}.jpg" for i in range(40)] for split in ("train", "val", "test")}
    for split, listed in names.items():
        (tmp_path / split).mkdir()
        for name in listed:
            (tmp_path / name).write_bytes(b"x")
    gone = [names["train"][5], names["train"][31], names["val"][0], names["test"][39]]
    for name in gone:
        (tmp_path / name).unlink()
    active, peak, lock = [0], [0], threading.Lock()

    def slow_is_file(path: str) -> bool:  # a network stat: the caller waits 2 ms
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.002)
        with lock:
            active[0] -= 1
        return os.path.isfile(path)

    monkeypatch.setattr(build_module, "_is_file", slow_is_file)
    splits = SimpleNamespace(folder=tmp_path, **{s: [(n, 0, "c") for n in listed] for s, listed in names.items()})
    indices = {split: list(range(40)) for split in names}
    with pytest.raises(BuildError) as raised:
        build_module._check_images(splits, indices, "x.json")
    assert str(raised.value).startswith(f"4 of the images listed by x.json are missing under {tmp_path}: "
                                        f"{gone[0]}, {gone[1]}, {gone[2]} ...; ")
    assert peak[0] > 1, "the stats ran one at a time"


def test_a_class_without_train_images_is_counted_in_the_shortfall_warning(tmp_path: Path) -> None:
    """A split source may list a class in test alone (a `folder:` tree whose test/ has a class train/ lacks): no
    few-shot subset holds it, which the warning says at every shot count; it counted only the classes in train
    ("2 of 2 classes", nothing at 1 shot)."""
    from lathadapter.cache.build import shortfall_notes
    from lathadapter.cache.datasets import DatasetSplits

    train = [(f"{name}/{i}.png", label, name) for label, name in enumerate("ab") for i in range(3)]
    test = [(f"{name}/t{i}.png", label, name) for label, name in enumerate("abc") for i in range(2)]
    splits = DatasetSplits("abc", "folder", tmp_path, "", ["a", "b", "c"], "a photo of a {}.", train, [], test, "")
    notes = shortfall_notes(splits, [1, 2, 4])
    assert [note.split(";")[0] for note in notes] == [
        f"warning: --shots {k}: {n} of 3 classes have fewer than {k} train images (class 'c' has 0)"
        for k, n in ((1, 1), (2, 1), (4, 3))]
