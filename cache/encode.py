"""open_clip model loading (QuickGELU, offline tags, config files), the image views, and batched encoding."""

from __future__ import annotations

import codecs
import contextlib
import difflib
import hashlib
import logging
import math
import os
import re
import socket
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from lathadapter.cache.text import read_json

PRECISIONS = ("fp32", "fp16", "bf16", "amp")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CAUSE_CHARS = 200  # of a checkpoint's load error quoted in `ModelError`
# Augmented training views (Tip-Adapter): random resized crop, bicubic, then a horizontal flip half of the time.
# These defaults are the field's, made for 224-pixel photographs; `Augmentation` sets others per build.
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
FLIP_PROBABILITY = 0.5


class AugmentationError(ValueError):
    """An augmentation range or probability outside its domain: a usage mistake (the CLI exits 2)."""

    exit_code = 2  # usage, as `OptionError`


@dataclass(frozen=True)
class Augmentation:
    """How a build draws each training image's augmented views: torchvision's RandomResizedCrop with these `crop_scale`
    (fraction of the area) and `crop_ratio` (aspect) ranges, bicubic, then a horizontal flip with probability `flip`.
    Recorded in the cache fingerprint, so views drawn otherwise make another cache. A value outside its range is an
    `AugmentationError` (a usage mistake)."""

    crop_scale: tuple[float, float] = CROP_SCALE
    crop_ratio: tuple[float, float] = CROP_RATIO
    flip: float = FLIP_PROBABILITY

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise AugmentationError(f"--crop-scale {low:g},{high:g}: need 0 < low ≤ high ≤ 1 (a fraction of the "
                                    f"image's area; the field's default is {CROP_SCALE[0]:g},{CROP_SCALE[1]:g})")
        low, high = self.crop_ratio
        if not 0 < low <= high or not math.isfinite(high):
            raise AugmentationError(f"--crop-ratio {low:g},{high:g}: need 0 < low ≤ high (width / height; the field's "
                                    "default is 0.75,1.333)")
        if not 0 <= self.flip <= 1:
            raise AugmentationError(f"--flip {self.flip:g}: a probability, between 0 and 1 (the field's default "
                                    f"is {FLIP_PROBABILITY:g})")

    def fields(self) -> dict[str, object]:
        """The fingerprint entry: what a reader needs to redraw the views."""
        return {"crop_scale": list(self.crop_scale), "crop_ratio": list(self.crop_ratio), "interpolation": "bicubic",
                "hflip": self.flip}


class ModelError(ValueError):
    """A model name, config file, checkpoint, precision or device that cannot be used."""


class ModelOptionError(ModelError):
    """A model name, pretrained tag, precision or device name that does not exist: a usage mistake (the CLI exits 2,
    not 1)."""

    exit_code = 2  # usage, as `OptionError`


@dataclass
class ClipModel:
    """A loaded open_clip model with its eval transform, tokenizer, and what identifies it in a fingerprint."""

    model: torch.nn.Module
    preprocess: object  # open_clip's eval transform: the clean view
    tokenizer: object
    device: torch.device
    precision: str
    embed_dim: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fields: dict[str, object]
    notes: list[str] = field(default_factory=list)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks (checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _hub_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline_without_network() -> bool:
    """Set `HF_HUB_OFFLINE=1` when the user has not set it and the Hub is unreachable, so a named tag fails at once
    (about 46 s of retries otherwise) or loads from the local Hugging Face cache. Returns whether offline mode is on."""
    if "HF_HUB_OFFLINE" not in os.environ and not _hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True  # the hub reads this at call time; the env only at import
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model_name(model: str) -> tuple[str, dict[str, object] | None]:
    """An open_clip model name, or a model-config JSON registered with open_clip under its file stem."""
    path = Path(model)
    if model.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ModelError(f"--model {model}: model-config file does not exist")
        try:
            config = read_json(path, f"--model {model}", ModelError)
        except OSError as error:
            raise ModelError(f"--model {model} is not a readable JSON model config ({error})") from error
        if path.read_bytes().startswith(codecs.BOM_UTF8):  # open_clip registers the file by reading it again
            raise ModelError(f"--model {model} starts with a UTF-8 byte-order mark, which open_clip cannot read; save "
                             "it as UTF-8 without one")
        missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
        if missing:
            raise ModelError(f"--model {model}: an open_clip model config needs embed_dim, vision_cfg and text_cfg; "
                             f"missing {', '.join(missing)}")
        open_clip.add_model_config(path)
        return path.stem, config
    if model not in open_clip.list_models():
        close = difflib.get_close_matches(model, open_clip.list_models(), n=5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ModelOptionError(f"--model {model!r} is not an open_clip model name.{hint} Pass a name from "
                               "`open_clip.list_models()` or the path of a model-config JSON.")
    return model, None


def hub_repository(checkpoint: Path) -> str | None:
    """The Hugging Face repository a checkpoint file was downloaded from when it lies in the hub's cache
    (`models--<owner>--<name>/snapshots/<revision>/<file>`, or its `blobs/`), else None. The hub forbids `--` in
    repository names, so the folder's name maps back to one repository."""
    for folder in Path(os.path.abspath(checkpoint)).parents:
        if folder.name.startswith("models--"):
            return folder.name.removeprefix("models--").replace("--", "/")
    return None


def hub_quick_gelu() -> dict[str, bool]:
    """Whether the weights of each Hugging Face repository that open_clip's pretrained tags download from (their
    `hf_hub`, e.g. `timm/vit_base_patch16_clip_224.openai`) were trained with QuickGELU, as open_clip's tag says."""
    table: dict[str, bool] = {}
    for model, tag in open_clip.list_pretrained():
        config = open_clip.get_pretrained_cfg(model, tag)
        if config.get("hf_hub"):
            repository = "/".join(config["hf_hub"].strip("/").split("/")[:2])
            table[repository] = table.get(repository, False) or bool(config.get("quick_gelu", False))
    return table


def quick_gelu_weights(checkpoint: Path) -> str | None:
    """Why checkpoint file `checkpoint` holds weights trained with QuickGELU, or None: its file name says OpenAI, it is
    a TorchScript archive (OpenAI's own .pt files), or it lies in the Hugging Face cache of a repository that open_clip
    downloads QuickGELU weights from (OpenAI's, MetaCLIP's, DFN's: the `open_clip_pytorch_model.bin` of
    `models--timm--vit_base_patch16_clip_224.openai` was built with GELU). Other folders above the file say nothing."""
    if "openai" in checkpoint.name.lower():
        return "holds OpenAI weights"
    repository = hub_repository(checkpoint)
    if repository is not None and hub_quick_gelu().get(repository, False):
        return f"is open_clip's {repository} from the Hugging Face cache"
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                return "holds OpenAI weights (a TorchScript archive)"
    except (zipfile.BadZipFile, OSError):
        pass
    return None


def pretrained_kind(name: str, pretrained: str) -> str:
    """What `pretrained` names for open_clip model `name`: `none` (a random init), a checkpoint `file`, or a `tag` of
    the model's; a missing checkpoint file (`ModelError`) or an unknown tag (`ModelOptionError`) is refused."""
    if pretrained.lower() == "none":
        return "none"
    if Path(pretrained).is_file():
        return "file"
    if pretrained.endswith(CHECKPOINT_SUFFIXES) or os.sep in pretrained:
        raise ModelError(f"--pretrained {pretrained}: checkpoint file does not exist")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        listed = ", ".join(tags) if tags else "none (pass a checkpoint file)"
        raise ModelOptionError(f"--pretrained {pretrained!r} is not a pretrained tag of {name}; its tags: {listed}. "
                               "A local file works too: --pretrained /path/to/checkpoint.{pt,bin,safetensors}")
    return "tag"


def check_model(model: str, pretrained: str, precision: str = "fp32") -> None:
    """What `load_model` refuses before loading anything (the precision, the model name or config file, the
    pretrained tag or checkpoint file), refused before a build writes anything."""
    check_precision(precision)
    pretrained_kind(resolve_model_name(model)[0], pretrained)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ModelOptionError(f"--precision {precision!r} is not valid; valid: {', '.join(PRECISIONS)}")


def load_model(model: str, pretrained: str, *, device: str | None = None, precision: str = "fp32",
               quick_gelu: bool | None = None, seed: int = 0) -> ClipModel:
    """Create an open_clip model from `model` (name or config JSON) and `pretrained` (tag, checkpoint path, `none`).

    Weights trained with QuickGELU (OpenAI's; `quick_gelu_weights`) get it (`quick_gelu=None` decides so
    automatically); `none` is a seeded random init.
    """
    check_model(model, pretrained, precision)
    target = resolve_device(device)
    name, config = resolve_model_name(model)
    fields: dict[str, object] = {"model": name, "open_clip_version": open_clip.__version__, "precision": precision}
    if config is not None:
        fields["model_config"] = config
    notes: list[str] = []
    base_quick_gelu = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    checkpoint: str | None
    why: str | None = None  # why the weights were trained with QuickGELU
    kind = pretrained_kind(name, pretrained)
    if kind == "none":
        checkpoint, fields["pretrained"] = None, "none"
    elif kind == "file":
        checkpoint = pretrained
        fields["pretrained"] = "file"
        fields["checkpoint_sha256"] = sha256_file(Path(pretrained))
        why = quick_gelu_weights(Path(pretrained))
    else:
        checkpoint, fields["pretrained"] = pretrained, pretrained
        if open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False):
            why = "holds OpenAI weights" if pretrained == "openai" else f"is open_clip's {name} {pretrained} tag"
    wanted = why is not None if quick_gelu is None else quick_gelu
    force = wanted and not base_quick_gelu
    if quick_gelu is None and force:
        notes.append(f"{pretrained} {why}, trained with QuickGELU: building {name} with QuickGELU (as "
                     f"{name}-quickgelu); pass --no-quick-gelu to keep GELU")
    fields["quick_gelu"] = base_quick_gelu or force
    is_tag = fields["pretrained"] not in ("file", "none")
    offline = go_offline_without_network() if is_tag else False
    if checkpoint is None:
        torch.manual_seed(seed)
    try:
        with _held_log_records():
            built, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=checkpoint, precision="fp32" if precision == "amp" else precision, device=target,
                force_quick_gelu=force)
    except torch.cuda.OutOfMemoryError as error:  # building the model, whatever its weights: not a checkpoint's fault
        raise ModelError(f"--device {target}: out of memory building {name} ({_cause(error)}); free the device's "
                         "memory or pass --device cpu") from error
    except Exception as error:  # open_clip's checkpoint loading raises whatever torch.load, safetensors or its
        if kind == "file":      # own shape asserts raise: an unpickling error, EOFError, AssertionError, ...
            raise _checkpoint_error(name, pretrained, error) from error
        if kind == "none":  # a random init: no checkpoint to blame
            raise ModelError(f"cannot build --model {name} with --pretrained none ({_cause(error)})") from error
        if not isinstance(error, RuntimeError):
            raise
        where = "no network and not in the local Hugging Face cache" if offline else str(error)
        raise ModelError(f"cannot load pretrained weights {pretrained!r} for {name} ({where}). Download the "
                         "checkpoint elsewhere and pass --pretrained /path/to/checkpoint.{pt,bin,safetensors}"
                         ) from error
    built.eval()
    cfg = dict(built.visual.preprocess_cfg)
    size = cfg["size"]
    image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    fields["preprocess"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    embed_dim = int(open_clip.get_model_config(name)["embed_dim"])
    return ClipModel(built, preprocess, open_clip.get_tokenizer(name), target, precision, embed_dim, image_size,
                     tuple(cfg["mean"]), tuple(cfg["std"]), fields, notes)


class _Held(logging.Handler):
    """Keeps the log records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _held_log_records() -> Iterator[None]:
    """Hold what is logged (open_clip logs through the root logger) while a model loads, and pass it on only when
    the load succeeds: a failed load ends in our own one-line error, which open_clip's "ERROR:root:Failed to
    download weights ..." line preceded."""
    root, held = logging.getLogger(), _Held()
    handlers = root.handlers[:]
    root.handlers[:] = [held]
    try:
        yield
    finally:
        root.handlers[:] = handlers
    for record in held.records:  # reached only when the load did not raise
        root.handle(record)


def _cause(error: Exception) -> str:
    """`error` as one line of at most `CAUSE_CHARS` characters, its type first (a state-dict mismatch lists hundreds
    of keys over many lines)."""
    cause = " ".join(f"{type(error).__name__}: {error}".split()) if str(error) else type(error).__name__
    return cause if len(cause) <= CAUSE_CHARS else cause[:CAUSE_CHARS] + " …"


def _checkpoint_error(name: str, pretrained: str, error: Exception) -> ModelError:
    """One line for a checkpoint file open_clip cannot load as `name`'s weights (a checkpoint of another model, a
    damaged or foreign file): the cause cut to its first words (a state-dict mismatch lists hundreds of keys)."""
    return ModelError(f"--pretrained {pretrained}: cannot load it as the weights of --model {name} "
                      f"({_cause(error)}); pass the --model the checkpoint was trained as (an open_clip name from "
                      "`lathadapter list models`, or a model-config JSON), or a checkpoint of this model")


def resolve_device(device: str | None) -> torch.device:
    """`None` means cuda when available, else cpu; an unavailable CUDA device is an error, not a silent fallback."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as error:
        raise ModelOptionError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from error
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return target


def view_seed(seed: int, path: str) -> int:
    """The augmentation seed of one image: fixed by the build seed and the image's path, so neither resuming nor
    the worker count nor which subsets are requested changes its views."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def crop_params(width: int, height: int, generator: torch.Generator, augmentation: Augmentation = Augmentation()
                ) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params` with `augmentation`'s scale and ratio, drawing from `generator`
    (the same stream of draws)."""
    area = height * width
    scale, ratio = augmentation.crop_scale, augmentation.crop_ratio
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision computes it
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augmented_views(image: Image.Image, views: int, seed: int, size: tuple[int, int], mean: Sequence[float],
                    std: Sequence[float], augmentation: Augmentation = Augmentation()) -> torch.Tensor:
    """`views` augmented views `[V, 3, H, W]` of an RGB image, drawn from one generator seeded with `seed`."""
    if views == 0:
        return torch.zeros(0, 3, *size)
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for _ in range(views):
        i, j, h, w = crop_params(image.width, image.height, generator, augmentation)
        view = TF.resized_crop(image, i, j, h, w, list(size), InterpolationMode.BICUBIC)
        if torch.rand(1, generator=generator) < augmentation.flip:
            view = TF.hflip(view)
        crops.append(np.asarray(view))
    # ToTensor and Normalize on the whole stack at once: the same element-wise arithmetic, less per-view overhead.
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)
    return TF.normalize(pixels, list(mean), list(std))


@dataclass
class LoadedItem:
    """One row's pixels (clean view and augmented views), or the reason its image could not be read."""

    row: int
    clean: torch.Tensor | None
    views: torch.Tensor | None
    error: str | None = None
    warnings: tuple[str, ...] = ()  # what Pillow warned reading it (`decode`)


def as_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `image`, as the field's loaders make (`convert("RGB")`), except that a 16-bit grayscale
    image keeps its top 8 bits: Pillow's conversion clips its values at 255, so a 16-bit PNG became pure white. A
    32-bit integer image (mode I) is read as 8-bit when its values fit, else as 16-bit; one with values outside
    0..65535, or a float image, has no 8-bit reading: ValueError (an unreadable image, skipped with --skip-bad)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"a 32-bit image (mode {image.mode}) with values outside 0..65535: save it as 8 or "
                             "16 bits")
        if image.mode == "I" and (values.size == 0 or values.max() <= 255):
            return image.convert("RGB")  # 8-bit values held in 32 bits: Pillow reads them right
        return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        raise ValueError("a floating-point image (mode F): save it as 8 or 16 bits")
    return image.convert("RGB")


def decode(path: Path) -> tuple[Image.Image, tuple[str, ...]]:
    """`path` read as 8-bit RGB (`as_rgb`), and the warnings reading it raised (`DecompressionBombWarning`, Pillow's
    palette with bytes transparency), whose text does not name the file: the build names it (`DecodeWarnings`).
    `warnings.catch_warnings` is not thread-safe before Python 3.14; decoding runs in one thread a process (the
    DataLoader's worker processes, or the main thread with `--workers 0`), so no other thread's warning is caught."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # each image's, not once a process
        with Image.open(path) as opened:
            image = as_rgb(opened)
    return image, tuple(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))


WARNINGS_LISTED = 3  # images named in a warning that several raised


class DecodeWarnings:
    """The warnings decoding raised, each with the images that raised it (relative to the dataset folder), once a
    (warning, image): one line a kind of warning, counting its images and naming the first few, so a dataset of
    10,000 palette PNGs says so in one line. Kinds differ in their text less its numbers (an image's size)."""

    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, str]] = {}  # text less numbers → {image: its warning}

    def add(self, path: str, messages: Sequence[str]) -> None:
        for message in messages:
            self.kinds.setdefault(re.sub(r"\d+", "#", message), {}).setdefault(path, message)

    def lines(self) -> list[str]:
        lines = []
        for images in self.kinds.values():
            paths = list(images)
            if len(paths) == 1:
                lines.append(f"warning: {paths[0]}: {images[paths[0]]}")
                continue
            parts = zip(*(re.split(r"(\d+)", message) for message in images.values()), strict=True)
            text = "".join(part[0] if len(set(part)) == 1 else "N" for part in parts)  # numbers that differ: N
            shown = ", ".join(paths[:WARNINGS_LISTED])
            lines.append(f"warning: {len(paths)} images: {text} ("
                         + (f"first {WARNINGS_LISTED}: {shown} ...)" if len(paths) > WARNINGS_LISTED else f"{shown})"))
        return lines


UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what Pillow raises on a file it cannot read


def unreadable_reason(path: Path, error: BaseException) -> str:
    """Why `path` is not an image, in a few words (Pillow's "cannot identify image file '<the path again>'" for
    an empty file, a text file or macOS's `._photo.jpg`)."""
    if isinstance(error, Image.UnidentifiedImageError):
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                return "an empty file"
        return "not an image file Pillow can read"
    return f"{type(error).__name__}: {error}"


def image_problem(path: Path) -> str | None:
    """Why Pillow cannot open `path` as an image, from its header alone (40-60 µs a JPEG; decoding it takes 0.1-1 ms),
    or None. A file cut short after its header passes: only decoding finds it."""
    try:
        with Image.open(path):
            return None
    except UNREADABLE as error:
        return unreadable_reason(path, error)


class ImageRows(torch.utils.data.Dataset):
    """The rows of one split to encode: decodes each image and makes its clean and augmented views."""

    def __init__(self, folder: Path, paths: Sequence[str], rows: Sequence[int], preprocess: object, views: int,
                 seed: int, size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 augmentation: Augmentation = Augmentation()) -> None:
        self.folder, self.paths, self.rows = folder, list(paths), list(rows)
        self.augmentation = augmentation
        self.preprocess, self.views, self.seed = preprocess, views, seed
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> LoadedItem:
        row = self.rows[index]
        path = self.paths[row]
        try:
            image, warned = decode(self.folder / path)
        except UNREADABLE as error:
            return LoadedItem(row, None, None, unreadable_reason(self.folder / path, error))
        clean = self.preprocess(image)
        views = augmented_views(image, self.views, view_seed(self.seed, path), self.size, self.mean, self.std,
                                self.augmentation) if self.views else None
        return LoadedItem(row, clean, views, warnings=warned)


def collate(items: list[LoadedItem]) -> list[LoadedItem]:
    """Keep the batch as a list: rows with unreadable images travel beside the good ones."""
    return items


def _autocast(clip: ClipModel) -> AbstractContextManager:
    if clip.precision != "amp":
        return nullcontext()
    dtype = torch.float16 if clip.device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=clip.device.type, dtype=dtype)


def _input_dtype(clip: ClipModel) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(clip.precision, torch.float32)


@torch.no_grad()
def encode_images(clip: ClipModel, pixels: torch.Tensor, return_norms: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features `[N, D]` (float32, on the CPU) of preprocessed pixels `[N, 3, H, W]`; with
    `return_norms`, also the norms `[N]` of the model's unnormalised features (the raw feature is `unit * norm`)."""
    with _autocast(clip):
        features = clip.model.encode_image(pixels.to(clip.device, _input_dtype(clip)))
    features = features.float()
    unit = (features / features.norm(dim=-1, keepdim=True)).cpu()
    return (unit, features.norm(dim=-1).cpu()) if return_norms else unit


@torch.no_grad()
def encode_texts(clip: ClipModel, texts: Sequence[str], batch_size: int = 256, return_norms: bool = False,
                 on_batch: Callable[[int], None] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised text features `[N, D]` (float32, on the CPU) of `texts`, in batches; with `return_norms`, also
    the norms `[N]` of the unnormalised features. `on_batch(n)` follows each batch of n texts (progress)."""
    out, norms = [], []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[start:start + batch_size])).to(clip.device)
        with _autocast(clip):
            features = clip.model.encode_text(tokens).float()
        out.append((features / features.norm(dim=-1, keepdim=True)).cpu())
        norms.append(features.norm(dim=-1).cpu())
        if on_batch is not None:
            on_batch(len(tokens))
    unit = torch.cat(out) if out else torch.zeros(0, clip.embed_dim)
    if not return_norms:
        return unit
    return unit, torch.cat(norms) if norms else torch.zeros(0)
