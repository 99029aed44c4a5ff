"""Dataset readers: every docs/data.md dataset on a tiny generated tree in its own layout, and the two generic forms."""

from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import pytest
from PIL import Image

from lathadapter.cache.datasets import DATASETS, DatasetError, dataset_name, load_dataset, read_split_file
from lathadapter.cache.templates import ensemble_templates, load_attributes, prompt


def _image(path: Path, shade: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 50, 50)).save(path)


def _split_layout(root: Path, name: str) -> dict[str, list[list[object]]]:
    """A 3-class split dataset in `name`'s layout; returns the split file's content."""
    spec = DATASETS[name]
    folder = root / spec.folder
    image_dir = folder / spec.image_dir if spec.image_dir else folder
    split: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(["a_b", "c", "d"]):
        for part, count in (("train", 3), ("val", 1), ("test", 2)):
            for i in range(count):
                relative = f"{cls}/{part}_{i}.jpg"
                _image(image_dir / relative)
                split[part].append([relative, label, cls])
    (folder / spec.split_file).write_text(json.dumps(split))
    return split


@pytest.mark.parametrize("name", [n for n, spec in DATASETS.items() if spec.kind == "split"])
def test_split_file_datasets_read_their_own_layout(tmp_path: Path, name: str) -> None:
    split = _split_layout(tmp_path, name)
    spec = DATASETS[name]
    data = load_dataset(tmp_path, name)
    prefix = f"{spec.image_dir}/" if spec.image_dir else ""
    assert data.folder == tmp_path / spec.folder
    assert data.class_names == ["a_b", "c", "d"]
    assert data.template == spec.template
    for part in ("train", "val", "test"):
        assert getattr(data, part) == [(prefix + p, label, c) for p, label, c in split[part]]
        assert all((data.folder / p).is_file() for p, _, _ in getattr(data, part))


def test_coop_templates_match_the_data_table() -> None:
    table = {"caltech101": "a photo of a {}.", "oxford_pets": "a photo of a {}, a type of pet.",
             "food101": "a photo of {}, a type of food.", "dtd": "{} texture.",
             "eurosat": "a centered satellite photo of {}.", "ucf101": "a photo of a person doing {}.",
             "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
             "oxford_flowers": "a photo of a {}, a type of flower."}
    assert {name: DATASETS[name].template for name in table} == table
    assert prompt(table["dtd"], "banded_stripes") == "banded stripes texture."


def test_missing_dataset_folder_shows_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path, "caltech101")
    message = str(error.value)
    assert str(tmp_path / "caltech-101") in message
    assert "101_ObjectCategories/" in message and "split_zhou_Caltech101.json" in message
    (tmp_path / "caltech-101" / "101_ObjectCategories").mkdir(parents=True)
    with pytest.raises(DatasetError, match="split_zhou_Caltech101.json not found"):
        load_dataset(tmp_path, "caltech101")
    with pytest.raises(DatasetError, match="images_variant_train.txt"):
        load_dataset(tmp_path, "fgvc_aircraft")
    with pytest.raises(DatasetError, match=r"images/train/<wnid>/<image>"):
        load_dataset(tmp_path, "imagenet")
    with pytest.raises(DatasetError, match="--root is required"):
        load_dataset(None, "dtd")


def test_bad_split_files_and_names_are_named(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": [["x.jpg", 0, "a"]], "val": []}))
    with pytest.raises(DatasetError, match="keys train, val and test"):
        read_split_file(path)
    for value in (5, None, {"x.jpg": 0}, "x.jpg"):  # a split that is not a list (5 raised a TypeError)
        path.write_text(json.dumps({"train": value, "val": [], "test": []}))
        with pytest.raises(DatasetError, match="each a list of"):
            read_split_file(path)
    path.write_text(json.dumps({"train": [["x.jpg", "0", "a"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=r"train\[0\]"):
        read_split_file(path)
    path.write_text(json.dumps({"train": [["x.jpg", 0, "a"], ["y.jpg", 0, "b"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match="label 0 has two class names"):
        read_split_file(path)
    path.write_text(json.dumps({"train": [["x.jpg", 0, "a"], ["y.jpg", 2, "b"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=r"missing \[1\]"):
        read_split_file(path)
    path.write_text('{"train": [],\n "val": [,]}')  # the position as the JSON parser gives it, 1-based
    with pytest.raises(DatasetError, match=r"s.json: invalid JSON at line 2, column 10: Expecting value$"):
        read_split_file(path)
    with pytest.raises(DatasetError, match="unknown dataset 'caltech'.*caltech101"):
        load_dataset(tmp_path, "caltech")
    with pytest.raises(DatasetError, match="exactly once"):
        load_dataset(tmp_path, "split:" + str(path), template="a photo")


def _aircraft_layout(root: Path, variants: list[str]) -> Path:
    """An FGVCAircraft folder of one image per split and variant; returns the folder."""
    folder = root / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    for part in ("train", "val", "test"):
        (folder / f"images_variant_{part}.txt").write_text("".join(f"{part}{i} {v}\n" for i, v in enumerate(variants)))
    return folder


def _imagenet_sketch_layout(root: Path, names: dict[str, str]) -> Path:
    """An ImageNet-Sketch folder of one image per class; returns its `classnames.txt`."""
    _classnames(root / "imagenet-sketch", names)
    for wnid in names:
        _image(root / "imagenet-sketch" / "images" / wnid / "s.JPEG")
    return root / "imagenet-sketch" / "classnames.txt"


def _latin1_file(path: Path, lines: list[str]) -> tuple[int, int]:
    """Rewrite `path` as Latin-1 `lines`; returns the 1-based line and the byte offset of its first non-ASCII byte,
    counted here from the lines themselves."""
    text = "".join(f"{line}\n" for line in lines)
    path.write_bytes(text.encode("latin-1"))
    first = next(i for i, char in enumerate(text) if ord(char) > 127)
    return text[:first].count("\n") + 1, first  # Latin-1 is one byte a character


@pytest.mark.parametrize("reader", ["split", "aircraft variants", "aircraft images", "classnames", "attributes"])
def test_a_text_file_that_is_not_utf8_is_named_with_its_line_and_byte(tmp_path: Path, reader: str) -> None:
    """A Latin-1 file (a class name with an accent) was a raw UnicodeDecodeError (or a traceback); the error names the
    file, the line and the byte and says to save it as UTF-8."""
    if reader == "split":
        split = {"train": [["a.jpg", 0, "cafe"]], "val": [], "test": [["b.jpg", 0, "café"]]}
        path = tmp_path / "split_zhou_Cafe.json"
        line, offset = _latin1_file(path, json.dumps(split, ensure_ascii=False, indent=1).splitlines())
        read = lambda: load_dataset(None, f"split:{path}")  # noqa: E731
    elif reader.startswith("aircraft"):
        folder = _aircraft_layout(tmp_path, ["707-320", "A300B4"])
        if reader == "aircraft variants":
            path = folder / "variants.txt"
            line, offset = _latin1_file(path, ["707-320", "A300B4", "Fokker 100 é"])
        else:
            path = folder / "images_variant_test.txt"
            line, offset = _latin1_file(path, ["test0 707-320", "test1 Ä300B4"])
        read = lambda: load_dataset(tmp_path, "fgvc_aircraft")  # noqa: E731
    elif reader == "classnames":
        path = _imagenet_sketch_layout(tmp_path, {"n01": "tench", "n02": "goldfish"})
        line, offset = _latin1_file(path, ["n01 tench", "n02 poisson rouge à nageoires"])
        read = lambda: load_dataset(tmp_path, "imagenet_sketch")  # noqa: E731
    else:
        path = tmp_path / "attributes.txt"
        line, offset = _latin1_file(path, ["red", "# colours", "café au lait"])
        read = lambda: load_attributes(path)  # noqa: E731
    with pytest.raises(ValueError) as caught:
        read()
    assert str(caught.value).endswith(f"{path}: line {line}: byte 0x{path.read_bytes()[offset]:02x} at offset "
                                      f"{offset} is not UTF-8; save the file as UTF-8 (e.g. `iconv -f latin1 -t "
                                      "utf-8`)")
    assert reader == "attributes" or isinstance(caught.value, DatasetError)


def test_a_utf16_text_file_is_named_as_utf16(tmp_path: Path) -> None:
    path = tmp_path / "split_zhou_Wide.json"
    path.write_text(json.dumps({"train": [["a.jpg", 0, "a"]], "val": [], "test": []}), encoding="utf-16")
    with pytest.raises(DatasetError, match=r"line 1: byte 0xff at offset 0 is not UTF-8 \(the file is UTF-16\); "
                                           r"save the file as UTF-8 \(e.g. `iconv -f utf-16 -t utf-8`\)"):
        load_dataset(None, f"split:{path}")


def test_a_byte_that_is_not_utf8_after_a_byte_order_mark_is_named_where_it_lies(tmp_path: Path) -> None:
    """A file saved with a BOM whose later lines are Latin-1 (an editor's 'UTF-8 with BOM' applied to part of it):
    the byte and offset named are the file's own; the error named the byte 3 before it (utf-8-sig counts from after
    the mark)."""
    path = tmp_path / "attributes.txt"
    data = b"\xef\xbb\xbfred\n# colours\ncaf\xe9 au lait\n"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(ValueError, match=f"^--attributes {path}: line 3: byte 0xe9 at offset {offset} is not UTF-8;"):
        load_attributes(path)


def test_a_utf8_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    """Windows editors start UTF-8 files with a BOM: it was a JSON error in a split file, and the first line's value
    in the others (a phrase "\\ufeffred", a wnid that matched no folder, a variant no line named)."""
    bom = "\ufeff"
    split = {"train": [["a.jpg", 0, "owl"]], "val": [], "test": [["b.jpg", 0, "owl"]]}
    path = tmp_path / "split_zhou_Bom.json"
    path.write_text(bom + json.dumps(split), encoding="utf-8")
    assert load_dataset(None, f"split:{path}").class_names == ["owl"]
    attributes = tmp_path / "attributes.txt"
    attributes.write_text(f"{bom}red\nblue\n", encoding="utf-8")
    assert load_attributes(attributes) == ["red", "blue"]
    classnames = _imagenet_sketch_layout(tmp_path, {"n01": "tench", "n02": "goldfish"})
    classnames.write_text(f"{bom}n01 tench\nn02 goldfish\n", encoding="utf-8")
    assert load_dataset(tmp_path, "imagenet_sketch").wnids == ["n01", "n02"]
    folder = _aircraft_layout(tmp_path, ["707-320", "A300B4"])
    for name in ("variants.txt", "images_variant_train.txt"):
        (folder / name).write_text(bom + (folder / name).read_text(), encoding="utf-8")
    aircraft = load_dataset(tmp_path, "fgvc_aircraft")
    assert aircraft.class_names == ["707-320", "A300B4"] and aircraft.train[0] == ("images/train0.jpg", 0, "707-320")


def test_split_path_form_reads_paths_relative_to_the_file(coop_dataset) -> None:
    data = load_dataset(None, f"split:{coop_dataset.split_file}", template="a drawing of a {}.")
    split = json.loads(coop_dataset.split_file.read_text())
    assert data.name == "Shapes"
    assert data.folder == coop_dataset.folder and data.image_dir == ""
    assert data.class_names == coop_dataset.classes
    assert [list(item) for item in data.train] == split["train"]
    assert data.template == "a drawing of a {}."
    assert load_dataset(None, f"split:{coop_dataset.split_file}").template == "a photo of a {}."


@pytest.mark.parametrize("name", ["oxford_pets", "oxford_flowers", "eurosat"])
def test_split_path_form_reads_a_coop_folder_whose_images_lie_in_a_subfolder(tmp_path: Path, name: str) -> None:
    """A CoOp-layout folder given as `split:` (its JSON's paths relative to `images/`, `jpg/`, `2750/`): every item
    names a file that exists, found under the one subfolder that holds the images, as the named reader finds them."""
    split = _split_layout(tmp_path, name)
    spec = DATASETS[name]
    data = load_dataset(None, f"split:{tmp_path / spec.folder / spec.split_file}")
    assert data.image_dir == spec.image_dir and data.folder == tmp_path / spec.folder
    for part in ("train", "val", "test"):
        assert [(p.removeprefix(f"{spec.image_dir}/"), label, c) for p, label, c in getattr(data, part)] == [
            tuple(item) for item in split[part]]
        assert all((data.folder / p).is_file() for p, _, _ in getattr(data, part))
    (tmp_path / spec.folder / "copy" / spec.image_dir).mkdir(parents=True)  # a second subfolder without the images
    assert load_dataset(None, f"split:{tmp_path / spec.folder / spec.split_file}").image_dir == spec.image_dir


def test_aircraft_labels_are_variant_lines_and_items_keep_file_order(tmp_path: Path) -> None:
    folder = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F-16A/B"]
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = {"train": ["0001 F-16A/B", "0002 707-320", "0003 F-16A/B", "0004 A300B4"],
             "val": ["0005 A300B4"], "test": ["0006 707-320", "0007 F-16A/B"]}
    for part, rows in lines.items():
        (folder / f"images_variant_{part}.txt").write_text("\n".join(rows) + "\n")
    data = load_dataset(tmp_path, "fgvc_aircraft")
    assert data.class_names == variants
    assert data.train == [("images/0001.jpg", 2, "F-16A/B"), ("images/0002.jpg", 0, "707-320"),
                          ("images/0003.jpg", 2, "F-16A/B"), ("images/0004.jpg", 1, "A300B4")]
    assert data.test == [("images/0006.jpg", 0, "707-320"), ("images/0007.jpg", 2, "F-16A/B")]
    (folder / "images_variant_val.txt").write_text("0005 Boeing 747\n")
    with pytest.raises(DatasetError, match=r"images_variant_val.txt:1: variant 'Boeing 747'"):
        load_dataset(tmp_path, "fgvc_aircraft")


def test_imagenet_labels_follow_sorted_wnids_and_it_has_no_val(tmp_path: Path) -> None:
    folder = tmp_path / "imagenet"
    names = {"n02": "goldfish", "n01": "tench", "n03": "great white shark"}
    for wnid in names:
        for i in range(2):
            _image(folder / "images" / "train" / wnid / f"{wnid}_{i}.JPEG")
        _image(folder / "images" / "val" / wnid / f"val_{wnid}.JPEG")
    (folder / "classnames.txt").write_text("".join(f"{w} {names[w]}\n" for w in sorted(names)))
    data = load_dataset(tmp_path, "imagenet")
    assert data.class_names == ["tench", "goldfish", "great white shark"]
    assert data.wnids == ["n01", "n02", "n03"]
    assert data.val == [] and not data.val_subsets
    assert data.train[:2] == [("images/train/n01/n01_0.JPEG", 0, "tench"), ("images/train/n01/n01_1.JPEG", 0, "tench")]
    assert [label for _, label, _ in data.test] == [0, 1, 2]


def test_imagenet_classnames_are_written_from_open_clip_when_missing(tmp_path: Path) -> None:
    train = tmp_path / "imagenet" / "images" / "train"
    wnids = [f"n{i:08d}" for i in range(1000)]
    for wnid in wnids:
        (train / wnid).mkdir(parents=True)
    _image(train / wnids[5] / "a.JPEG")
    (tmp_path / "imagenet" / "images" / "val").mkdir()
    data = load_dataset(tmp_path, "imagenet")
    written = (tmp_path / "imagenet" / "classnames.txt").read_text().splitlines()
    assert written[0] == f"{wnids[0]} {open_clip.IMAGENET_CLASSNAMES[0]}"
    assert len(written) == 1000
    assert data.train == [(f"images/train/{wnids[5]}/a.JPEG", 5, open_clip.IMAGENET_CLASSNAMES[5])]
    (tmp_path / "imagenet" / "classnames.txt").unlink()
    (train / wnids[0]).rmdir()
    with pytest.raises(DatasetError, match="ships 1000 ImageNet class names but .* has 999"):
        load_dataset(tmp_path, "imagenet")


def _classnames(folder: Path, names: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in names.items()))


def test_imagenet_variants_are_test_only_with_wnids(tmp_path: Path) -> None:
    names = {"n01": "tench", "n02": "goldfish", "n03": "great white shark", "n04": "tiger shark"}
    for spec in DATASETS.values():
        if spec.kind == "imagenet-variant":
            _classnames(tmp_path / spec.folder, names)
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for i in range(4):
        _image(v2 / str(i) / "x.jpeg")
    data = load_dataset(tmp_path, "imagenetv2")
    assert data.test_only and data.train == [] and data.val == []
    assert data.wnids == list(names) and data.class_names == list(names.values())
    assert data.test[2] == ("imagenetv2-matched-frequency-format-val/2/x.jpeg", 2, "great white shark")
    # -A and -R cover a subset of the classes: their own labels in sorted-wnid order, and the wnids to map them back.
    for name, subdir in (("imagenet_a", "imagenet-adversarial/imagenet-a"),
                         ("imagenet_r", "imagenet-rendition/imagenet-r")):
        for wnid in ("n04", "n02"):
            _image(tmp_path / subdir / wnid / "y.jpg")
        (tmp_path / subdir / "README.txt").write_text("not a class")
        data = load_dataset(tmp_path, name)
        assert data.wnids == ["n02", "n04"] and data.class_names == ["goldfish", "tiger shark"]
        assert [label for _, label, _ in data.test] == [0, 1]
    _image(tmp_path / "imagenet-sketch" / "images" / "n03" / "s.JPEG")
    sketch = load_dataset(tmp_path, "imagenet_sketch")
    assert sketch.test == [("images/n03/s.JPEG", 0, "great white shark")] and sketch.wnids == ["n03"]
    _image(tmp_path / "imagenet-sketch" / "images" / "n99" / "s.JPEG")
    with pytest.raises(DatasetError, match="no class for the folders \\['n99'\\]"):
        load_dataset(tmp_path, "imagenet_sketch")


def test_folder_tree_with_split_folders(tmp_path: Path) -> None:
    for part, count in (("train", 3), ("test", 2)):
        for cls in ("dog", "cat"):
            for i in range(count):
                _image(tmp_path / "pets" / part / cls / f"{i}.png")
    (tmp_path / "pets" / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset(None, f"folder:{tmp_path / 'pets'}")
    assert data.name == "pets" and data.class_names == ["cat", "dog"]
    assert data.train[0] == ("train/cat/0.png", 0, "cat") and len(data.train) == 6
    assert data.val == [] and len(data.test) == 4



def test_a_folder_tree_reads_the_images_imagefolder_reads_less_hidden_files_and_warns_of_the_rest(
        tmp_path: Path) -> None:
    """A class folder as real ones are: upper-case suffixes, .ppm/.pgm/.webp/.tif, a linked image, macOS litter, a
    GIF, text files, a subfolder of images. What is read is what torchvision's ImageFolder reads (its extensions, in
    any case, through links, in subfolders) and GIFs (read before; Pillow reads them), less hidden files
    (`._photo.jpg` is AppleDouble metadata, not a JPEG); the rest is counted in one warning. .ppm/.pgm and subfolders
    were left out, and the rest was silent."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    tree = tmp_path / "pets"
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            _image(tree / part / cls / "0.png")
    cat = tree / "train" / "cat"
    for name in ("UP.JPG", "UP.JPEG", "UP.PNG", "a.ppm", "a.pgm", "a.webp", "a.tif", "a.tiff", "a.bmp", "a.gif"):
        _image(cat / name)
    (cat / "link.jpg").symlink_to(tree / "train" / "dog" / "0.png")
    (cat / "broken.jpg").symlink_to(tree / "nowhere.jpg")
    (cat / "._UP.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (cat / ".DS_Store").write_bytes(b"Bud1")
    (cat / "notes.txt").write_text("not an image")
    (cat / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    _image(cat / "nested" / "deep.jpg")
    data = load_dataset(None, f"folder:{tree}")
    read = {path for path, label, _ in data.train if label == 0}
    imagefolder = {f"train/cat/{p.name}" for p in cat.iterdir()  # less the broken link, which its loader fails on
                   if has_file_allowed_extension(p.name, (*IMG_EXTENSIONS, ".gif")) and p.is_file()}
    assert read == imagefolder - {"train/cat/._UP.JPG"} | {"train/cat/nested/deep.jpg"}
    assert {"train/cat/UP.JPG", "train/cat/a.ppm", "train/cat/link.jpg"} <= read and "train/cat/a.gif" in read
    warnings = [note for note in data.notes if note.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: folder:{tree}: left out 3 files of class folders that are not images: train/cat/Thumbs.db, "
        "train/cat/broken.jpg, train/cat/notes.txt (")


def test_a_folder_tree_is_listed_without_a_stat_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing a `folder:` tree (every `cache build`, an up-to-date one too) takes each entry's type from the directory
    listing: a stat per image is a network round trip on NFS, and the listing of images and then of what is not an
    image made two per image (1.8× the listing's time on a local disk). Links are still followed (one stat each)."""
    tree = tmp_path / "pets"
    for cls in ("cat", "dog"):
        for i in range(12):
            _image(tree / cls / f"{i}.png")
    (tree / "cat" / "link.jpg").symlink_to(tree / "dog" / "0.png")
    (tree / "cat" / "loop.jpg").symlink_to(tree / "cat" / "loop.jpg")  # left out with a warning, not an OSError
    stats: list[str] = []
    stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *args, **kw: stats.append(str(path)) or stat(path, *args, **kw))
    data = load_dataset(None, f"folder:{tree}")
    assert len(data.train) + len(data.val) + len(data.test) == 25
    assert not [path for path in stats if path.endswith(".png")]
    assert [note for note in data.notes if note.startswith("warning:")] == [
        f"warning: folder:{tree}: left out 1 file of class folders that are not images: cat/loop.jpg (images are "
        ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp, .gif files, in any case, at any depth)"]


@pytest.mark.parametrize("parts", [("train", "val"), ("train",), ("val", "test")])
def test_split_folders_without_train_or_test_are_named(tmp_path: Path, parts: tuple[str, ...]) -> None:
    """A tree of split folders lacking train/ or test/ (an ImageFolder's train/ and val/) is refused by what it has
    and lacks; it was read as class folders named 'train' and 'val' ("class folder 'train' has 0 images")."""
    for part in parts:
        for cls in ("dog", "cat"):
            for i in range(5):
                _image(tmp_path / "pets" / part / cls / f"{i}.png")
    lacks = [part for part in ("train", "test") if part not in parts]
    has = " and ".join(f"{part}/" for part in parts)
    with pytest.raises(DatasetError, match=rf"pets has {has} but no {lacks[0]}/ of class folders: split folders "
                                           r"need train/ and test/ \(val/ optional\)"):
        load_dataset(None, f"folder:{tmp_path / 'pets'}")

def test_folder_dataset_names_its_folder_when_given_as_dot_or_with_a_trailing_slash(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """`folder:.` from inside the folder, `folder:..` from a class folder and `folder:pets/` all name the dataset
    `pets`, as the folder is called, and its default cache `pets.h5` (not an empty name and `.h5`)."""
    for cls in ("dog", "cat"):
        for i in range(4):
            _image(tmp_path / "pets" / cls / f"{i}.png")
    monkeypatch.chdir(tmp_path / "pets")
    assert load_dataset(None, "folder:.").name == "pets" and dataset_name("folder:.") == "pets"
    monkeypatch.chdir(tmp_path / "pets" / "dog")
    assert load_dataset(None, "folder:..").name == "pets" and dataset_name("folder:..") == "pets"
    monkeypatch.chdir(tmp_path)
    assert load_dataset(None, "folder:pets/").name == "pets" and dataset_name("folder:pets/") == "pets"
    (tmp_path / "link").symlink_to(tmp_path / "pets")
    assert dataset_name("folder:link") == "link" == load_dataset(None, "folder:link").name


@pytest.mark.parametrize("where", ["class", "image"])
def test_a_name_that_is_not_utf8_is_named_with_the_fix(tmp_path: Path, where: str) -> None:
    """A class folder or image named in Latin-1 (b"caf\\xe9"): one DatasetError naming it; before, the build ended in
    "'utf-8' codec can't encode character '\\udce9'", naming nothing. UTF-8 names with accents and spaces load."""
    root = os.fsencode(tmp_path / "pets")
    for cls in (b"dog", "naïve café".encode()):
        for i in range(4):
            _image(Path(os.fsdecode(os.path.join(root, cls, b"%d.png" % i))))
    assert load_dataset(None, f"folder:{tmp_path / 'pets'}").class_names == ["dog", "naïve café"]
    bad = os.path.join(root, b"caf\xe9", b"0.png") if where == "class" else os.path.join(root, b"dog", b"\xe9.png")
    _image(Path(os.fsdecode(bad)))
    with pytest.raises(DatasetError, match="the name is not UTF-8; rename it") as error:
        load_dataset(None, f"folder:{tmp_path / 'pets'}")
    assert ("caf" if where == "class" else "dog") in str(error.value)


def test_folder_tree_without_splits_is_split_per_class_with_a_seed(tmp_path: Path) -> None:
    for cls in ("dog", "cat"):
        for i in range(10):
            _image(tmp_path / "pets" / cls / f"{i}.png")
    first = load_dataset(None, f"folder:{tmp_path / 'pets'}", seed=0)
    again = load_dataset(None, f"folder:{tmp_path / 'pets'}", seed=0)
    other = load_dataset(None, f"folder:{tmp_path / 'pets'}", seed=1)
    assert (first.train, first.val, first.test) == (again.train, again.val, again.test)
    assert first.train != other.train
    assert [len(first.train), len(first.val), len(first.test)] == [10, 4, 6]
    every = sorted(p for p, _, _ in first.train + first.val + first.test)
    assert every == sorted(f"{c}/{i}.png" for c in ("dog", "cat") for i in range(10))
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(None, f"folder:{tmp_path / 'nothing'}")
    # 4 images split 2/1/1; 3 would leave no test image (round(1.5) = 2 train, 1 val) and 2 no val image
    for count in (3, 2):
        for i in range(count):
            _image(tmp_path / f"few{count}" / "owl" / f"{i}.png")
        with pytest.raises(DatasetError, match=f"'owl' has {count} images; a 50/20/30 split needs at least 4"):
            load_dataset(None, f"folder:{tmp_path / f'few{count}'}")
    _image(tmp_path / "few3" / "owl" / "3.png")
    four = load_dataset(None, f"folder:{tmp_path / 'few3'}")
    assert [len(four.train), len(four.val), len(four.test)] == [2, 1, 1]


def test_template_ensemble_and_attribute_vocabulary(tmp_path: Path) -> None:
    templates = ensemble_templates("{} texture.")
    assert templates[0] == "{} texture." and len(templates) == 8
    assert templates[1:] == [t("{}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES]
    shipped = load_attributes()
    assert 100 <= len(shipped) <= 200 and len(set(shipped)) == len(shipped)
    assert {"red", "striped", "furry", "metallic", "round", "small", "on grass"} <= set(shipped)
    custom = tmp_path / "attrs.txt"
    custom.write_text("# colours\nred\n\nshiny  # finish\n")
    assert load_attributes(custom) == ["red", "shiny"]
    custom.write_text("red\nblue\nred\n")
    with pytest.raises(ValueError, match=r"attrs.txt:3: 'red' repeats line 1"):
        load_attributes(custom)
    with pytest.raises(ValueError, match="cannot be read"):
        load_attributes(tmp_path / "missing.txt")


def test_a_template_may_hold_doubled_braces_beside_its_slot(tmp_path: Path) -> None:
    """Templates are filled with `str.format`, as CoOp fills them: `{{`/`}}` are literal braces, `{}` the name."""
    for name in ("owl", "sea_lion"):
        for i in range(4):
            _image(tmp_path / "two" / name / f"{i}.png")
    splits = load_dataset(None, f"folder:{tmp_path / 'two'}", template="a {} {{logo}}.")
    assert prompt(splits.template, "sea_lion") == "a sea lion {logo}."
    splits = load_dataset(None, f"folder:{tmp_path / 'two'}", template="{{}} a {}.")  # a literal '{}' beside it
    assert prompt(splits.template, "owl") == "{} a owl."


def _nested_tree(root: Path, outside: Path) -> None:
    """Class folders with images at several depths, folder names whose sorted order is not the walk's (`a-b` sorts
    between `a` and `a/c` as a path), mixed-case suffixes, a linked folder and files that are not images."""
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            _image(root / part / cls / "top.png")
    cat = root / "train" / "cat"
    for name in ("Z.JPG", "a/y.PNG", "a/c/deep.webp", "a-b/k.jpeg", "a-b/notes.txt", "a/c/e/f/g.bmp", "b c/h.tif"):
        if name.endswith(".txt"):
            (cat / name).write_text("not an image")
        else:
            _image(cat / name)
    _image(outside / "linked.png")
    _image(outside / "inner" / "more.jpg")
    (cat / "a" / "shared").symlink_to(outside, target_is_directory=True)
    (root / "test" / "dog" / "readme.md").write_text("not an image")


def test_a_folder_tree_lists_nested_images_as_imagefolder_does(tmp_path: Path) -> None:
    """Images at any depth under a class folder, in torchvision ImageFolder's order (its `samples`, the oracle): a
    tree built for ImageFolder gives the same image list. Subfolders were left out with a warning."""
    from torchvision.datasets import ImageFolder

    tree = tmp_path / "pets"
    _nested_tree(tree, tmp_path / "elsewhere")
    data = load_dataset(None, f"folder:{tree}")
    for part, items in (("train", data.train), ("test", data.test)):
        oracle = ImageFolder(str(tree / part)).samples
        assert [(path, label) for path, label, _ in items] == [
            (Path(path).relative_to(tree).as_posix(), label) for path, label in oracle]
    assert "train/cat/a/shared/inner/more.jpg" in [path for path, _, _ in data.train]
    assert [note for note in data.notes if note.startswith("warning:")] == [
        f"warning: folder:{tree}: left out 2 files of class folders that are not images: train/cat/a-b/notes.txt, "
        "test/dog/readme.md (images are .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp, .gif files, in any "
        "case, at any depth)"]


def test_a_folder_tree_without_split_folders_splits_its_nested_images(tmp_path: Path) -> None:
    """The 50/20/30 form splits every image under each class folder: train, val and test together hold
    ImageFolder's images, each once."""
    from torchvision.datasets import ImageFolder

    _nested_tree(tmp_path / "data", tmp_path / "elsewhere")
    tree = tmp_path / "data" / "train"  # cat: 10 images at several depths, dog: 1 and 3 more beside it
    for i in range(3):
        _image(tree / "dog" / "more" / f"{i}.png")
    data = load_dataset(None, f"folder:{tree}")
    read = sorted((path, label) for path, label, _ in data.train + data.val + data.test)
    oracle = ImageFolder(str(tree)).samples
    assert read == sorted((Path(path).relative_to(tree).as_posix(), label) for path, label in oracle)


def test_a_link_back_to_a_folder_above_is_not_followed(tmp_path: Path) -> None:
    """A link to a folder that holds it is a loop (ImageFolder follows it about 40 levels deep, listing each image as
    often): it is not followed, with a warning naming it, and the images read are the tree's without it."""
    from torchvision.datasets import ImageFolder

    tree = tmp_path / "pets"
    _nested_tree(tree, tmp_path / "elsewhere")
    oracle = ImageFolder(str(tree / "train")).samples  # before the loops
    cat = tree / "train" / "cat"
    (cat / "a" / "c" / "up").symlink_to(cat / "a", target_is_directory=True)
    (cat / "self").symlink_to(cat, target_is_directory=True)
    data = load_dataset(None, f"folder:{tree}")
    assert [(path, label) for path, label, _ in data.train] == [
        (Path(path).relative_to(tree).as_posix(), label) for path, label in oracle]
    assert f"warning: folder:{tree}: did not follow 2 links to a folder that holds it (a loop): " \
           "train/cat/a/c/up/, train/cat/self/" in data.notes


def test_a_link_to_a_folder_above_the_class_folder_is_not_followed(tmp_path: Path) -> None:
    """A link in a class folder to the split folder, the tree or a folder above it holds the link too (a loop): it
    was followed, so every other class's images (and, through the tree, the test images) were read as that class's
    train images, and only the links met inside were named."""
    from torchvision.datasets import ImageFolder

    tree = tmp_path / "pets"
    _nested_tree(tree, tmp_path / "elsewhere")
    oracle = ImageFolder(str(tree / "train")).samples  # before the links
    cat = tree / "train" / "cat"
    for name, target in (("split", tree / "train"), ("tree", tree), ("outside", tmp_path)):
        (cat / "a" / name).symlink_to(target, target_is_directory=True)
    data = load_dataset(None, f"folder:{tree}")
    assert [(path, label) for path, label, _ in data.train] == [
        (Path(path).relative_to(tree).as_posix(), label) for path, label in oracle]
    assert f"warning: folder:{tree}: did not follow 3 links to a folder that holds it (a loop): " \
           "train/cat/a/outside/, train/cat/a/split/, train/cat/a/tree/" in data.notes
