"""Time `cache build` with the tiny test model on this CPU: images/s with 0 and 2 decoding workers, and where the
time goes (decoding images, making the views, encoding, writing).

    python benchmarks/cache_build.py [--sizes 32,224] [--views 10] [--threads 1]
        [--out benchmarks/results/cache_build.json]

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


def end_to_end(split: Path, views: int, workers: int) -> dict[str, float]:
    """One full build into a scratch file: images/s over the image passes, and the build's own time split."""
    with tempfile.TemporaryDirectory() as scratch:
        result = build(None, f"split:{split}", Path(scratch) / "bench.h5", model=str(CONFIG),
                       pretrained=str(checkpoint()), shots=(1,), seeds=(1,), full_train=True, views=views,
                       batch_size=32, workers=workers, device="cpu", progress=False, log=lambda message: None)
    stats = result.stats
    busy = stats.load_seconds + stats.encode_seconds + stats.write_seconds
    return {"images": stats.images, "images_per_s": stats.images / busy, "wall_s": stats.total_seconds,
            "load_s": stats.load_seconds, "encode_s": stats.encode_seconds, "write_s": stats.write_seconds,
            "text_s": stats.text_seconds}


def components(split: Path, views: int) -> dict[str, float]:
    """Seconds per image for each stage, measured alone over the train images in the main process."""
    folder = split.parent
    paths = [p for p, _, _ in json.loads(split.read_text())["train"]]
    clip = load_model(str(CONFIG), str(checkpoint()), device="cpu")
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
    tick = time.perf_counter()
    pixels = torch.cat([clean, augmented])
    for start in range(0, len(pixels), 32 * (views + 1)):
        encode_images(clip, pixels[start:start + 32 * (views + 1)])
    encode = time.perf_counter() - tick
    n = len(paths)
    return {"decode_ms": 1e3 * decode / n, "clean_view_ms": 1e3 * clean_s / n, "augmented_views_ms": 1e3 * views_s / n,
            "encode_ms": 1e3 * encode / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,224", help="Image sizes (px) of the generated datasets.")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable on a shared 2-core CPU).")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cache_build.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        split = dataset_for(size)
        end_to_end(split, args.views, 0)  # warm-up: file cache, lazy imports
        row: dict[str, object] = {"image_px": size, "views": args.views, "threads": args.threads}
        for workers in (0, 2):
            run = end_to_end(split, args.views, workers)
            row[f"workers{workers}"] = run
        row["per_image"] = components(split, args.views)
        rows.append(row)

    print(f"\ncache build, tiny model (32 px input, ViT 2 layers), {len(CLASSES)} classes; train images with "
          f"{args.views} augmented views, val and test clean only; torch threads {args.threads}, "
          f"{os.cpu_count()} CPU cores\n")
    print("| source images | images (train+val+test) | workers 0: images/s | workers 2: images/s | "
          "load / encode / write (workers 0) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        w0, w2 = row["workers0"], row["workers2"]
        busy = w0["load_s"] + w0["encode_s"] + w0["write_s"]
        shares = " / ".join(f"{100 * w0[k] / busy:.0f}%" for k in ("load_s", "encode_s", "write_s"))
        print(f"| {row['image_px']} px PNG | {w0['images']} | {w0['images_per_s']:.0f} | {w2['images_per_s']:.0f} "
              f"| {shares} |")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
