"""Time `cache build`: images/s for each count of decoding workers, and where the time goes (decoding images, making
the views, encoding, writing). By default the tiny test model on this CPU; `--model ViT-B-16 --device cuda` times the
one-time GPU pass with a randomly initialised ViT-B-16 (`--pretrained none`: no download, the same work per image).

    python benchmarks/cache_build.py [--sizes 32,224] [--views 10] [--threads 1] [--workers 0,2]
        [--model CONFIG|NAME] [--pretrained PATH|none] [--device cpu|cuda] [--batch-size 32] [--precision fp32]
        [--out benchmarks/results/cache_build.json]

images/s counts source images; passes/s counts encoder passes (a train image is encoded 1 + views times). The build's
own split of its time says what bounds it: `load` is the time the encoder waited for decoded, transformed images
(decoding bounds the build when it dominates), `encode` the model's forward passes.

Datasets are generated shapes in the CoOp layout (PNG, one per image size) under benchmarks/.data/; every train image
is encoded (`full_train`) as a clean view plus `--views` augmented views. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image

from lathadapter.cache.build import build
from lathadapter.cache.encode import augmented_views, encode_images, load_model, view_seed
from lathadapter.demo.synthetic import SHAPES, write_coop_dataset

DATA = Path(__file__).parent / ".data"
CONFIG = Path(__file__).parents[1] / "tests" / "data" / "lathadapter-tiny-test.json"
CLASSES = list(SHAPES[:10])
COUNTS = (30, 5, 20)  # train, val, test images per class


def dataset_for(size: int) -> Path:
    folder = DATA / f"shapes-{size}px"
    split = folder / "split_zhou_Shapes.json"
    if not split.exists():
        write_coop_dataset(folder, "Shapes", CLASSES, counts=COUNTS, seed=0, image_size=size)
    return split


def checkpoint() -> Path:
    path = DATA / "tiny-clip.pt"
    if not path.exists():
        open_clip.add_model_config(CONFIG)
        torch.manual_seed(0)
        DATA.mkdir(parents=True, exist_ok=True)
        torch.save(open_clip.create_model(CONFIG.stem).state_dict(), path)
    return path


def model_source(model: str, pretrained: str | None) -> tuple[str, str]:
    """(model, pretrained) for `build` and `load_model`: the tiny test model's own checkpoint unless given."""
    if pretrained is None:
        pretrained = str(checkpoint()) if model == str(CONFIG) else "none"
    return model, pretrained


def encoder_passes(images: int, views: int) -> int:
    """Encoder passes of a build of the generated dataset: train images 1 + views times, val and test once."""
    train = COUNTS[0] * len(CLASSES)
    return images + views * min(images, train)


def end_to_end(split: Path, views: int, workers: int, source: tuple[str, str], device: str,
               batch_size: int, precision: str = "fp32") -> dict[str, float]:
    """One full build into a scratch file: images/s over the image passes, and the build's own time split."""
    with tempfile.TemporaryDirectory() as scratch:
        result = build(None, f"split:{split}", Path(scratch) / "bench.h5", model=source[0],
                       pretrained=source[1], shots=(1,), seeds=(1,), full_train=True, views=views,
                       batch_size=batch_size, workers=workers, device=device, progress=False, precision=precision,
                       log=lambda message: None)
    stats = result.stats
    busy = stats.load_seconds + stats.encode_seconds + stats.write_seconds
    return {"images": stats.images, "images_per_s": stats.images / busy,
            "passes_per_s": encoder_passes(stats.images, views) / busy, "wall_s": stats.total_seconds,
            "load_s": stats.load_seconds, "encode_s": stats.encode_seconds, "write_s": stats.write_seconds,
            "text_s": stats.text_seconds}


def components(split: Path, views: int, source: tuple[str, str], device: str, batch_size: int,
               precision: str = "fp32") -> dict[str, float]:
    """Seconds per image for each stage, measured alone over the train images in the main process."""
    folder = split.parent
    paths = [p for p, _, _ in json.loads(split.read_text())["train"]]
    clip = load_model(*source, device=device, precision=precision)
    tick = time.perf_counter()
    images = []
    for path in paths:
        with Image.open(folder / path) as opened:
            images.append(opened.convert("RGB"))
    decode = time.perf_counter() - tick
    tick = time.perf_counter()
    clean = torch.stack([clip.preprocess(image) for image in images])
    clean_s = time.perf_counter() - tick
    tick = time.perf_counter()
    augmented = torch.cat([augmented_views(image, views, view_seed(0, path), clip.image_size, clip.mean, clip.std)
                           for image, path in zip(images, paths, strict=True)])
    views_s = time.perf_counter() - tick
    pixels = torch.cat([clean, augmented])
    encode_images(clip, pixels[:batch_size])  # warm-up (CUDA kernels, cuDNN); encode_images reads back to the CPU
    tick = time.perf_counter()
    for start in range(0, len(pixels), batch_size * (views + 1)):
        encode_images(clip, pixels[start:start + batch_size * (views + 1)])
    encode = time.perf_counter() - tick
    n = len(paths)
    return {"decode_ms": 1e3 * decode / n, "clean_view_ms": 1e3 * clean_s / n, "augmented_views_ms": 1e3 * views_s / n,
            "encode_ms": 1e3 * encode / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,224", help="Image sizes (px) of the generated datasets.")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable on a shared 2-core CPU).")
    parser.add_argument("--workers", default="0,2", help="decoding worker counts to time, e.g. 0,8,15")
    parser.add_argument("--model", default=str(CONFIG), help="open_clip model name or config JSON (default: the "
                        "tiny test model)")
    parser.add_argument("--pretrained", default=None, help="checkpoint path, or none for a random init (default: "
                        "the tiny model's saved checkpoint; none for any other model)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="source images per encoder batch")
    parser.add_argument("--precision", default="fp32", help="the encoder's precision, as `cache build --precision`: "
                        "fp32, fp16, bf16 or amp")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cache_build.json")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    source = model_source(args.model, args.pretrained)
    worker_counts = [int(w) for w in args.workers.split(",")]
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        split = dataset_for(size)
        end_to_end(split, args.views, worker_counts[0], source, args.device, args.batch_size,
                   args.precision)  # warm-up
        row: dict[str, object] = {"image_px": size, "views": args.views, "threads": args.threads,
                                  "model": args.model, "device": args.device, "batch_size": args.batch_size,
                                  "precision": args.precision}
        for workers in worker_counts:
            row[f"workers{workers}"] = end_to_end(split, args.views, workers, source, args.device, args.batch_size,
                                                  args.precision)
        row["per_image"] = components(split, args.views, source, args.device, args.batch_size, args.precision)
        rows.append(row)

    model = "tiny model (32 px input, ViT 2 layers)" if args.model == str(CONFIG) else \
        f"{args.model} ({source[1]})"
    where = f"CUDA {torch.cuda.get_device_name()}" if args.device == "cuda" else "CPU"
    print(f"\ncache build, {model} in {args.precision} on {where}, batches of {args.batch_size} images, "
          f"{len(CLASSES)} classes; train "
          f"images with {args.views} augmented views, val and test clean only; torch threads {args.threads}, "
          f"{os.cpu_count()} CPU cores\n")
    print("| source images | images (train+val+test) | workers | images/s | passes/s | load / encode / write |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        for workers in worker_counts:
            run = row[f"workers{workers}"]
            busy = run["load_s"] + run["encode_s"] + run["write_s"]
            shares = " / ".join(f"{100 * run[k] / busy:.0f}%" for k in ("load_s", "encode_s", "write_s"))
            print(f"| {row['image_px']} px PNG | {run['images']} | {workers} | {run['images_per_s']:.0f} | "
                  f"{run['passes_per_s']:.0f} | {shares} |")
    print("\nper train image, each stage alone (main process):\n")
    print("| source images | decode | clean view | augmented views | encode (1 + views) | decode share | "
          "decode + views share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        c = row["per_image"]
        total = sum(c.values())
        print(f"| {row['image_px']} px PNG | {c['decode_ms']:.2f} ms | {c['clean_view_ms']:.2f} ms | "
              f"{c['augmented_views_ms']:.2f} ms | {c['encode_ms']:.2f} ms | {100 * c['decode_ms'] / total:.0f}% | "
              f"{100 * (total - c['encode_ms']) / total:.0f}% |")
    print("\nwhat bounds the build (train images/s): decoding and views on W workers at most W × 1000 / (decode + "
          "clean view + augmented views ms); encoding at most 1000 / encode ms\n")
    for row in rows:
        c = row["per_image"]
        prepare = c["decode_ms"] + c["clean_view_ms"] + c["augmented_views_ms"]
        bounds = ", ".join(f"{w} workers {max(w, 1) * 1000 / prepare:.0f}" for w in worker_counts)
        encode = 1000 / c["encode_ms"]
        print(f"- {row['image_px']} px: decoding {bounds}; encoding {encode:.0f} "
              f"({'encoding' if encode < max(worker_counts + [1]) * 1000 / prepare else 'decoding'} bounds it at "
              f"{max(worker_counts)} workers)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
