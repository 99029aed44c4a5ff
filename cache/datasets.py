"""Dataset readers for the CoOp layout (docs/data.md) and two generic forms, all returning one `DatasetSplits`.

The user's root is read unchanged (the one exception: ImageNet's `classnames.txt` is written from open_clip's class
names when it is missing, as docs/data.md allows). Paths are stored relative to the dataset folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lathadapter.cache.text import read_json, read_text

# What a folder of images holds: torchvision's `ImageFolder` extensions (IMG_EXTENSIONS), in any case, and `.gif`,
# which this reader took before (Pillow reads it; leaving it out would shrink existing trees' datasets)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
OTHERS_LISTED = 3  # files of class folders that are not images (and loops), named in the warning that counts them
DEFAULT_TEMPLATE = "a photo of a {}."
# CoOp's proportions for datasets without a split file (its `read_and_split_data`): the rest is test.
FOLDER_SPLIT = (0.5, 0.2)

Item = tuple[str, int, str]  # (path relative to the dataset folder, label, class name)


class DatasetError(ValueError):
    """A dataset is missing, laid out differently from what its reader expects, or has inconsistent labels."""


class DatasetOptionError(DatasetError):
    """An unknown dataset name, a template without its `{}`, a missing `--root`: a usage mistake (the CLI exits 2)."""

    exit_code = 2  # usage, as `OptionError`


@dataclass(frozen=True)
class DatasetSpec:
    """One row of docs/data.md's table: where a dataset lives under the root and how its splits are defined."""

    name: str
    folder: str
    image_dir: str  # prefix of the split source's paths inside the folder ("" when none)
    split_file: str
    template: str
    kind: str = "split"  # split | aircraft | imagenet | imagenet-variant


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("imagenet", "imagenet", "images", "classnames.txt", DEFAULT_TEMPLATE, "imagenet"),
    DatasetSpec("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", DEFAULT_TEMPLATE),
    DatasetSpec("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
                "a photo of a {}, a type of pet."),
    DatasetSpec("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", DEFAULT_TEMPLATE),
    DatasetSpec("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                "a photo of a {}, a type of flower."),
    DatasetSpec("food101", "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    DatasetSpec("fgvc_aircraft", "fgvc_aircraft", "images", "variants.txt", "a photo of a {}, a type of aircraft.",
                "aircraft"),
    DatasetSpec("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", DEFAULT_TEMPLATE),
    DatasetSpec("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    DatasetSpec("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
    DatasetSpec("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
    DatasetSpec("imagenetv2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "classnames.txt",
                DEFAULT_TEMPLATE, "imagenet-variant"),
    DatasetSpec("imagenet_sketch", "imagenet-sketch", "images", "classnames.txt", DEFAULT_TEMPLATE,
                "imagenet-variant"),
    DatasetSpec("imagenet_a", "imagenet-adversarial", "imagenet-a", "classnames.txt", DEFAULT_TEMPLATE,
                "imagenet-variant"),
    DatasetSpec("imagenet_r", "imagenet-rendition", "imagenet-r", "classnames.txt", DEFAULT_TEMPLATE,
                "imagenet-variant"),
)}


@dataclass
class DatasetSplits:
    """A dataset's train/val/test lists, class names and prompt template, ready for sampling and encoding."""

    name: str
    kind: str
    folder: Path  # stored paths are relative to it
    image_dir: str  # prefix of the split source's own paths inside `folder` ("" when none)
    class_names: list[str]
    template: str
    train: list[Item]
    val: list[Item]
    test: list[Item]
    source_sha256: str  # hash of the split source (split file(s), or the listing of a folder tree)
    wnids: list[str] | None = None
    val_subsets: bool = True  # False for ImageNet: CoOp draws no few-shot val subset there
    notes: list[str] = field(default_factory=list)

    @property
    def test_only(self) -> bool:
        return not self.train


def layout_help(name: str) -> str:
    """The folder layout a named dataset's reader expects under `--root`, as an indented tree."""
    spec = DATASETS[name]
    lines = [f"  {spec.folder}/"]
    if spec.kind == "split":
        where = f"{spec.image_dir}/" if spec.image_dir else ""
        lines += [f"    {where}...            (images; split paths are relative to {spec.folder}/{where})",
                  f"    {spec.split_file}"]
    elif spec.kind == "aircraft":
        lines += ["    images/<image id>.jpg",
                  "    images_variant_train.txt, images_variant_val.txt, images_variant_test.txt",
                  "    variants.txt"]
    elif spec.kind == "imagenet":
        lines += ["    images/train/<wnid>/<image>", "    images/val/<wnid>/<image>",
                  "    classnames.txt        (<wnid> <class name> per line; written when missing)"]
    elif name == "imagenetv2":
        lines += [f"    {spec.image_dir}/<0..999>/<image>", "    classnames.txt"]
    else:
        lines += [f"    {spec.image_dir}/<wnid>/<image>", "    classnames.txt"]
    return "\n".join(lines)


def _missing(name: str, root: Path, what: Path) -> DatasetError:
    return DatasetError(f"{name}: {what} not found. Expected layout under --root {root}:\n{layout_help(name)}")


def _sha256_files(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _sha256_items(*lists: list[Item]) -> str:
    return hashlib.sha256(json.dumps(lists).encode()).hexdigest()


def _utf8(path: Path) -> str:
    """`path.name`, refused when it is not UTF-8 (Python decodes such bytes to surrogates, which the cache's
    HDF5 strings and JSON cannot hold: the build failed on "'utf-8' codec can't encode character '\\udce9'")."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"{path.parent / ascii(path.name)[1:-1]}: the name is not UTF-8; rename it (e.g. "
                           "`convmv -f latin1 -t utf8 --notest -r FOLDER`)") from None
    return path.name


def _is_image(entry: os.DirEntry[str]) -> bool:
    """An image file by its name: not hidden (`.DS_Store`, macOS's `._photo.jpg`), an image suffix in any case, and a
    file (a symbolic link to one counts, as `ImageFolder` reads through it). The type comes with the directory
    listing: no stat an image (a round trip each on NFS), so a tree is listed twice (images, then the rest) in the
    time a stat each took once. A link that loops is no file (`is_file` raises for it, unlike `Path.is_file`)."""
    if entry.name.startswith(".") or os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
        return False
    try:
        return entry.is_file()
    except OSError:
        return False


def _images_in(folder: Path) -> list[str]:
    """Image file names in `folder`, sorted (so listings do not depend on the filesystem)."""
    with os.scandir(folder) as entries:
        return sorted(_utf8(Path(entry.path)) for entry in entries if _is_image(entry))


@dataclass(frozen=True)
class ClassTree:
    """What a `folder:` tree's class folder holds at any depth: its images, as paths relative to it in torchvision
    ImageFolder's order, and what is left out of them (other files, broken links; links to a folder above them)."""

    images: list[str]
    others: list[Path]  # files that are not images, broken links
    loops: list[Path]  # links to a folder that holds them, not followed (ImageFolder follows them ~40 levels deep)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A folder, or a link to one (followed, as `os.walk(followlinks=True)` does); a broken or looping link is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _holds(real: str, chain: tuple[str, ...]) -> bool:
    """Whether the folder at real path `real` is one of `chain` (the real paths of the folders walked down to a
    link) or above one of them: following a link there would walk into the link again."""
    inside = real.rstrip(os.sep) + os.sep
    return any(path == real or path.startswith(inside) for path in chain)


def class_tree(folder: Path) -> ClassTree:
    """The images under `folder` at any depth, as torchvision's ImageFolder lists them (`make_dataset`: the folders
    of `os.walk(folder, followlinks=True)` sorted by path, then each one's files by name), less hidden files and
    folders. A linked folder is read through, except a link back to a folder that holds it (the class folder, one
    below it, or one above it: the split folder, the tree): the loop is cut there."""
    listed: list[tuple[str, list[str]]] = []  # (folder's path below `folder`, its images)
    others: list[Path] = []
    loops: list[Path] = []
    pending = [("", folder, (os.path.realpath(folder),))]
    while pending:
        below, path, above = pending.pop()  # `above`: the real paths of the folders from `folder` down to `path`
        images = []
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if _is_dir(entry):  # the real path without a syscall unless it is a link
                    real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(above[-1], entry.name)
                    if _holds(real, above):
                        loops.append(Path(entry.path))
                    else:
                        name = _utf8(Path(entry.path))
                        pending.append((f"{below}/{name}" if below else name, Path(entry.path), (*above, real)))
                elif _is_image(entry):
                    images.append(_utf8(Path(entry.path)))
                else:
                    others.append(Path(entry.path))
        listed.append((below, images))
    paths = [f"{below}/{name}" if below else name for below, names in sorted(listed) for name in sorted(names)]
    return ClassTree(paths, sorted(others), sorted(loops))


def _count(things: list, noun: str) -> str:
    """`1 file`, `4 files`."""
    return f"{len(things)} {noun}{'' if len(things) == 1 else 's'}"


def _others_note(path: Path, trees: list[ClassTree]) -> list[str]:
    """Warnings counting what a `folder:` tree's class folders hold that is not read, naming a few: files that are
    not images (they were left out silently), links to a folder above them (a loop, not followed)."""
    def named(paths: list[Path]) -> str:  # a name that is not UTF-8 printed, not a crash
        return ", ".join((p.relative_to(path).as_posix() + ("/" if p.is_dir() else "")).encode(
            "utf-8", "backslashreplace").decode() for p in paths[:OTHERS_LISTED]) + (
            " ..." if len(paths) > OTHERS_LISTED else "")

    others = [p for tree in trees for p in tree.others]
    loops = [p for tree in trees for p in tree.loops]
    notes = []
    if others:
        notes.append(f"warning: folder:{path}: left out {_count(others, 'file')} of class folders that are not "
                     f"images: {named(others)} (images are {', '.join(IMAGE_SUFFIXES)} files, in any case, at any "
                     "depth)")
    if loops:
        notes.append(f"warning: folder:{path}: did not follow {_count(loops, 'link')} to a folder that holds it (a "
                     f"loop): {named(loops)}")
    return notes


def _subfolders(folder: Path) -> list[str]:
    return sorted(_utf8(p) for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_names(items_by_split: dict[str, list[Item]], source: Path) -> list[str]:
    """Class names in label order from split entries; every label 0..C-1 must appear with one name."""
    names: dict[int, str] = {}
    for items in items_by_split.values():
        for path, label, name in items:
            if names.setdefault(label, name) != name:
                raise DatasetError(f"{source}: label {label} has two class names, {names[label]!r} and {name!r} "
                                   f"(at {path})")
    if not names:
        raise DatasetError(f"{source}: no items in train, val or test")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise DatasetError(f"{source}: labels must be 0..{max(names)} without gaps; missing {missing[:10]}")
    return [names[label] for label in range(len(names))]


def read_split_file(path: Path, prefix: str = "") -> tuple[dict[str, list[Item]], list[str]]:
    """Read a `split_zhou` JSON: its train/val/test items (paths prefixed by `prefix`) and the class names."""
    try:
        data = read_json(path, str(path), DatasetError)
    except OSError as error:
        raise DatasetError(f"{path} is not a readable split file ({error})") from error
    if not isinstance(data, dict) or any(not isinstance(data.get(key), list) for key in ("train", "val", "test")):
        raise DatasetError(f"{path}: a split file is a JSON object with keys train, val and test, each a list of "
                           '[relative_path, label, classname], e.g. ["Faces/image_0274.jpg", 0, "face"]')
    splits: dict[str, list[Item]] = {}
    for split in ("train", "val", "test"):
        items: list[Item] = []
        for position, entry in enumerate(data[split]):
            valid = (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                     and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
                     and isinstance(entry[2], str))
            if not valid:
                raise DatasetError(f"{path}: {split}[{position}] is {entry!r}; expected "
                                   "[relative_path, label, classname] with a label >= 0")
            items.append((f"{prefix}/{entry[0]}" if prefix else entry[0], entry[1], entry[2]))
        splits[split] = items
    if not splits["train"] and not splits["test"]:
        raise DatasetError(f"{path}: train and test are both empty")
    return splits, _class_names(splits, path)


def split_image_dir(path: Path) -> str:
    """The folder a `split:PATH` JSON's image paths are relative to, inside the JSON's folder: "" (the folder
    itself) when it holds the first listed image, else the one subfolder that does, as in CoOp's layout
    (`oxford_pets/split_zhou_OxfordPets.json` beside `images/`). Several or none: "" (the build then names the
    missing image)."""
    items, _ = read_split_file(path)
    first = (items["train"] or items["test"])[0][0]
    folder = path.parent
    if (folder / first).is_file():
        return ""
    holding = [name for name in _subfolders(folder) if (folder / name / first).is_file()]
    return holding[0] if len(holding) == 1 else ""


def _split_dataset(spec: DatasetSpec, root: Path) -> DatasetSplits:
    folder = root / spec.folder
    if not folder.is_dir():
        raise _missing(spec.name, root, folder)
    split_path = folder / spec.split_file
    if not split_path.is_file():
        raise _missing(spec.name, root, split_path)
    if spec.image_dir and not (folder / spec.image_dir).is_dir():
        raise _missing(spec.name, root, folder / spec.image_dir)
    splits, names = read_split_file(split_path, spec.image_dir)
    return DatasetSplits(spec.name, spec.kind, folder, spec.image_dir, names, spec.template, splits["train"],
                         splits["val"], splits["test"], _sha256_files(split_path))


def _aircraft(spec: DatasetSpec, root: Path) -> DatasetSplits:
    """FGVCAircraft as CoOp reads it: labels are line numbers of `variants.txt`; items keep file order."""
    folder = root / spec.folder
    files = [folder / "variants.txt"] + [folder / f"images_variant_{s}.txt" for s in ("train", "val", "test")]
    for path in [folder, folder / "images", *files]:
        if not path.exists():
            raise _missing(spec.name, root, path)
    names = [line.strip() for line in read_text(files[0], str(files[0]), DatasetError).splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(names)}
    splits: dict[str, list[Item]] = {}
    for split, path in zip(("train", "val", "test"), files[1:], strict=True):
        items: list[Item] = []
        for number, line in enumerate(read_text(path, str(path), DatasetError).splitlines(), start=1):
            if not line.strip():
                continue
            image, _, name = line.strip().partition(" ")
            if name not in label_of:
                raise DatasetError(f"{path}:{number}: variant {name!r} is not listed in {files[0]}")
            items.append((f"images/{image}.jpg", label_of[name], name))
        splits[split] = items
    return DatasetSplits(spec.name, spec.kind, folder, "images", names, spec.template, splits["train"],
                         splits["val"], splits["test"], _sha256_files(*files))


def read_classnames(path: Path) -> dict[str, str]:
    """An ImageNet `classnames.txt`: `<wnid> <class name>` per line, in file order."""
    names: dict[str, str] = {}
    for number, line in enumerate(read_text(path, str(path), DatasetError).splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name:
            raise DatasetError(f"{path}:{number}: expected '<wnid> <class name>', got {line.strip()!r}")
        names[wnid] = name
    return names


def imagenet_classnames(wnids: list[str], where: Path) -> dict[str, str]:
    """`classnames.txt`'s content from the sorted wnid folders and open_clip's 1000 (wnid-sorted) class names."""
    from open_clip import IMAGENET_CLASSNAMES

    if len(wnids) != len(IMAGENET_CLASSNAMES):
        raise DatasetError(f"{where / 'classnames.txt'} is missing and cannot be made: open_clip ships "
                           f"{len(IMAGENET_CLASSNAMES)} ImageNet class names but {where} has {len(wnids)} "
                           "class folders")
    return dict(zip(sorted(wnids), IMAGENET_CLASSNAMES, strict=True))


def _folder_items(folder: Path, split_dir: Path, class_dirs: list[str], label_of: dict[str, int],
                  name_of: dict[str, str], images: Callable[[Path], list[str]] = _images_in) -> list[Item]:
    """The items of class folders under `split_dir`, each class folder's `images` (ImageNet's: the files directly in
    it, as CoOp lists them; a `folder:` tree's: at any depth)."""
    items: list[Item] = []
    for class_dir in class_dirs:
        relative = (split_dir / class_dir).relative_to(folder).as_posix()
        items.extend((f"{relative}/{image}", label_of[class_dir], name_of[class_dir])
                     for image in images(split_dir / class_dir))
    return items


def _imagenet(spec: DatasetSpec, root: Path) -> DatasetSplits:
    """ImageNet: train and val folders per wnid, labels in sorted-wnid order; val is the test set."""
    folder = root / spec.folder
    train_dir, test_dir = folder / "images" / "train", folder / "images" / "val"
    for path in (folder, train_dir, test_dir):
        if not path.is_dir():
            raise _missing(spec.name, root, path)
    classnames = folder / "classnames.txt"
    notes = []
    wnids = _subfolders(train_dir)
    if classnames.is_file():
        names = read_classnames(classnames)
    else:
        names = imagenet_classnames(wnids, train_dir)
        try:
            classnames.write_text("".join(f"{wnid} {name}\n" for wnid, name in names.items()))
            notes.append(f"wrote {classnames} from open_clip's ImageNet class names")
        except OSError as error:
            notes.append(f"could not write {classnames} ({error}); using open_clip's ImageNet class names")
    ordered = sorted(names)
    unknown = sorted(set(wnids) - set(names)) + sorted(set(_subfolders(test_dir)) - set(names))
    if unknown:
        raise DatasetError(f"{classnames} lists no class for the folders {unknown[:5]}")
    label_of = {wnid: label for label, wnid in enumerate(ordered)}
    train = _folder_items(folder, train_dir, wnids, label_of, names)
    test = _folder_items(folder, test_dir, _subfolders(test_dir), label_of, names)
    return DatasetSplits(spec.name, spec.kind, folder, "images", [names[w] for w in ordered], spec.template, train,
                         [], test, _sha256_items(train, test), wnids=ordered, val_subsets=False, notes=notes)


def _imagenet_variant(spec: DatasetSpec, root: Path) -> DatasetSplits:
    """A test-only ImageNet variant; -A and -R keep their 200 classes (labels in sorted-wnid order, wnids kept)."""
    folder = root / spec.folder
    image_dir = folder / spec.image_dir
    classnames = folder / "classnames.txt"
    for path in (folder, image_dir, classnames):
        if not path.exists():
            raise _missing(spec.name, root, path)
    names = read_classnames(classnames)
    if spec.name == "imagenetv2":
        wnids = list(names)  # folder i is the i-th class of classnames.txt
        class_dirs = [str(i) for i in range(len(wnids)) if (image_dir / str(i)).is_dir()]
        if len(class_dirs) != len(wnids):
            raise _missing(spec.name, root, image_dir / f"<0..{len(wnids) - 1}> (found {len(class_dirs)} folders)")
        label_of = {str(i): i for i in range(len(wnids))}
        name_of = {str(i): names[w] for i, w in enumerate(wnids)}
    else:
        class_dirs = _subfolders(image_dir)
        unknown = [d for d in class_dirs if d not in names]
        if unknown:
            raise DatasetError(f"{classnames} lists no class for the folders {unknown[:5]} of {image_dir}")
        wnids = class_dirs
        label_of = {w: i for i, w in enumerate(wnids)}
        name_of = {w: names[w] for w in wnids}
    test = _folder_items(folder, image_dir, class_dirs, label_of, name_of)
    return DatasetSplits(spec.name, spec.kind, folder, spec.image_dir, [names[w] for w in wnids], spec.template,
                         [], [], test, _sha256_items(test), wnids=wnids, val_subsets=False)


def _split_folders(path: Path) -> list[str]:
    """Those of a `folder:` tree's `train/`, `val/`, `test/` that hold class folders (none: a folder per class)."""
    return [s for s in ("train", "val", "test") if (path / s).is_dir() and _subfolders(path / s)]


def class_folder_roots(path: Path) -> list[Path]:
    """The folders of a `folder:` tree whose every subfolder is read as a class: its split folders, else the tree."""
    parts = _split_folders(path)
    return [path / s for s in parts] if {"train", "test"} <= set(parts) else [path]


def read_folder_tree(path: Path, template: str, seed: int = 0) -> DatasetSplits:
    """A folder-per-class tree: `train/`, `val/`, `test/` subfolders of class folders when present (train/ and test/
    both, or refused), else one tree split per class 50/20/30 (CoOp's proportions) with a seeded shuffle. Labels
    follow sorted class folder names."""
    if not path.is_dir():
        raise DatasetError(f"folder:{path} does not exist. Expected either PATH/<class>/<image> or "
                           "PATH/train/<class>/<image>, PATH/test/<class>/<image> (and optionally PATH/val/...)")
    splits: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    parts = _split_folders(path)
    if parts and not {"train", "test"} <= set(parts):  # not class folders named "train" or "val"
        lacks = "train" if "train" not in parts else "test"
        has = " and ".join(f"{s}/" for s in parts)
        raise DatasetError(f"folder:{path} has {has} but no {lacks}/ of class folders: split folders need train/ "
                           f"and test/ (val/ optional), each of class folders; rename the one that holds the {lacks} "
                           f"images to {lacks}/")
    if parts:
        classes = sorted(set().union(*(_subfolders(path / s) for s in parts)))
        label_of = {c: i for i, c in enumerate(classes)}
        trees = {path / split / name: class_tree(path / split / name) for split in parts
                 for name in _subfolders(path / split)}
        for split in parts:
            splits[split] = _folder_items(path, path / split, _subfolders(path / split), label_of,
                                          {c: c for c in classes}, lambda folder: trees[folder].images)
        notes = [f"folder:{path}: splits from its {', '.join(parts)} folders"]
    else:
        classes = _subfolders(path)
        trees = {path / name: class_tree(path / name) for name in classes}
        rng = random.Random(seed)
        for label, name in enumerate(classes):
            images = [f"{name}/{image}" for image in trees[path / name].images]
            rng.shuffle(images)
            n_train, n_val = round(len(images) * FOLDER_SPLIT[0]), round(len(images) * FOLDER_SPLIT[1])
            if min(n_train, n_val, len(images) - n_train - n_val) < 1:
                caches = sorted(p.name for p in (path / name).glob("*.h5*"))  # `folder:.`'s default caches/
                hint = (f"; it holds a feature cache ({caches[0]}), not images: move it out of the tree, and give "
                        "cache build an --out outside it" if caches and not images else "")
                raise DatasetError(f"folder:{path}: class folder {name!r} has {len(images)} images; "
                                   "a 50/20/30 split needs at least 4 (one or more each for train, val and test)"
                                   + hint)
            for split, chunk in (("train", images[:n_train]), ("val", images[n_train:n_train + n_val]),
                                 ("test", images[n_train + n_val:])):
                splits[split].extend((p, label, name) for p in sorted(chunk))
        notes = [f"folder:{path}: split 50/20/30 per class with seed {seed}"]
    notes += _others_note(path, list(trees.values()))
    if not classes or not any(splits.values()):
        raise DatasetError(f"folder:{path} has no class folders with images ({', '.join(IMAGE_SUFFIXES)}). Expected "
                           "PATH/<class>/<image> or PATH/train/<class>/<image> and PATH/test/<class>/<image>")
    return DatasetSplits(folder_name(path), "folder", path, "", classes, template, splits["train"], splits["val"],
                         splits["test"], _sha256_items(splits["train"], splits["val"], splits["test"]), notes=notes)


def check_template(template: str | None) -> None:
    """Refuse a `--template` that `str.format` (how prompts are filled, as CoOp fills them) cannot fill with the class
    name exactly once: no `{}`, several, a `{{}}` (a literal `{}`: every class's prompt the same), or another field
    or a lone brace (`{style}`, `{`), which failed only after the model had loaded."""
    if template is None:
        return
    try:  # each replacement field as (name, format spec, conversion): the class name's slot is a bare `{}`
        slots = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                 if name is not None]
    except ValueError:  # a lone brace
        slots = []
    if slots != [("", "", None)]:
        raise DatasetOptionError(f"--template {template!r} must contain '{{}}' exactly once (where the class name "
                                 "goes), and any other brace doubled ('{{' or '}}' for a literal one)")


def folder_name(path: Path) -> str:
    """A `folder:PATH` dataset's name: the folder's own name, also for `.`, `..` or a trailing slash (`folder:.`
    in `shapes/` is `shapes`, not an empty name and a cache file called `.h5`); symbolic links are kept as named."""
    return Path(os.path.abspath(path)).name or "folder"


def dataset_name(dataset: str) -> str:
    """The name `load_dataset` gives `dataset`, without reading it: a docs/data.md name as it is, `split:PATH` its
    file's stem less `split_zhou_`, `folder:PATH` its folder's name. Its cache's default file is `<name>.h5`."""
    if dataset.startswith("folder:"):
        return folder_name(Path(dataset.removeprefix("folder:")))
    if dataset.startswith("split:"):
        path = Path(dataset.removeprefix("split:"))
        return path.stem.removeprefix("split_zhou_") or path.stem  # split_zhou_Caltech101.json → Caltech101
    return dataset


def reads_root(dataset: str) -> bool:
    """Whether `dataset` is read under `--root`: a docs/data.md name is; `folder:PATH` and `split:PATH` name their own
    path (a relative one from the current folder, never from the root)."""
    return not dataset.startswith(("folder:", "split:"))


def unread_root(root: Path, datasets: list[str]) -> str:
    """The warning for a `--root` that none of `datasets` reads: it would otherwise be ignored silently."""
    given = f"--dataset {datasets[0]} gives its own" if len(datasets) == 1 else "every --dataset is a folder: or split:"
    return (f"warning: --root {root} is not read: {given} path (a relative one is read from the current folder, not "
            "from --root)")


def load_dataset(root: Path | None, dataset: str, template: str | None = None, seed: int = 0) -> DatasetSplits:
    """Read `dataset` (a docs/data.md name under `root`, `folder:PATH` or `split:PATH`); `template` overrides the
    prompt."""
    check_template(template)
    if dataset.startswith("folder:"):
        splits = read_folder_tree(Path(dataset.removeprefix("folder:")), template or DEFAULT_TEMPLATE, seed)
    elif dataset.startswith("split:"):
        path = Path(dataset.removeprefix("split:"))
        if not path.is_file():
            raise DatasetError(f"split:{path} does not exist; pass the path of a split_zhou-format JSON whose image "
                               "paths are relative to the file's folder")
        image_dir = split_image_dir(path)
        items, names = read_split_file(path, image_dir)
        splits = DatasetSplits(dataset_name(dataset), "split-file", path.parent, image_dir, names, DEFAULT_TEMPLATE,
                               items["train"], items["val"], items["test"], _sha256_files(path))
    elif dataset in DATASETS:
        if root is None:
            raise DatasetOptionError(f"--root is required for dataset {dataset!r}. Expected layout under the root:\n"
                               f"{layout_help(dataset)}")
        if not root.is_dir():
            raise DatasetError(f"--root {root} is not a folder. Expected layout under it:\n{layout_help(dataset)}")
        spec = DATASETS[dataset]
        reader = {"split": _split_dataset, "aircraft": _aircraft, "imagenet": _imagenet,
                  "imagenet-variant": _imagenet_variant}[spec.kind]
        splits = reader(spec, root)
    else:
        raise DatasetOptionError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}, folder:PATH (a folder "
                                 "per class) or split:PATH (a split_zhou-format JSON)")
    if template is not None:
        splits.template = template
    return splits
