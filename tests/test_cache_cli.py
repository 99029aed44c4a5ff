"""`lathadapter cache build | info | verify | subset` from the command line, and every user error's message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from lathadapter.cache.sampling import fewshot_indices
from lathadapter.cli import app

runner = CliRunner()


def _build_args(coop_dataset, tiny_clip, *extra: str) -> list[str]:
    """A quick build of the test dataset; an option in `extra` replaces the default's (an option is given once)."""
    defaults = {"--dataset": f"split:{coop_dataset.split_file}", "--model": str(tiny_clip.config),
                "--pretrained": str(tiny_clip.checkpoint), "--shots": "1,2", "--seeds": "1", "--views": "2",
                "--workers": "0", "--batch-size": "16", "--device": "cpu"}
    kept = [arg for option, value in defaults.items() if option not in extra for arg in (option, value)]
    return ["cache", "build", *kept, "--no-progress", *extra]


@pytest.fixture(scope="module")
def built(coop_dataset, tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "shapes.h5"
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--out", str(out)))
    assert result.exit_code == 0, result.output
    assert f"{out}: built" in result.output and "images/s" in result.output
    return out


def test_build_writes_to_the_default_cache_folder(coop_dataset, tiny_clip, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--shots", "1"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "caches" / "Shapes.h5").is_file()
    assert not list((tmp_path / "caches").glob("*.tmp"))


def test_info_summarises_the_cache(built: Path, coop_dataset) -> None:
    result = runner.invoke(app, ["cache", "info", str(built)])
    assert result.exit_code == 0, result.output
    assert "Shapes (8 classes)" in result.output
    assert "lathadapter-tiny-test · checkpoint sha256" in result.output
    split = json.loads(coop_dataset.split_file.read_text())
    labels = {part: [label for _, label, _ in split[part]] for part in ("train", "val")}
    draws = [fewshot_indices(labels["train"], labels["val"], shots, 1) for shots in (1, 2)]
    train, val = (len(set().union(*(draw[i] for draw in draws))) for i in (0, 1))
    assert f"train {train} · val {val} · test 64" in result.output
    assert "2: shots 1,2 × seeds 1" in result.output
    # the views' crops and flips, here the field's defaults (scale 0.5-1, ratio 3/4-4/3, flip 1/2)
    assert "2 augmented views per train image (seed 0): crop scale 0.5–1, ratio 0.75–1.33, flip 0.5" in result.output
    assert "161 phrases" in result.output and "KiB" in result.output


def test_verify_passes_a_good_cache_and_names_each_problem(built: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["cache", "verify", str(built)])
    assert result.exit_code == 0 and result.output.strip().endswith(": ok"), result.output
    with h5py.File(built, "r") as f:
        rows = f["splits/train/labels"].shape[0]
    damages = {
        "splits/test/features": ("not unit norm", lambda f: f["splits/test/features"].__setitem__(3, 0.5)),
        "splits/train/augmented": ("non-finite", lambda f: f["splits/train/augmented"].__setitem__(1, float("nan"))),
        "subsets": (f"row indices outside 0..{rows - 1}",
                    lambda f: f["subsets/shots_2_seed_1/train"].__setitem__(0, rows)),
        "labels": ("values outside 0..7", lambda f: f["splits/val/labels"].__setitem__(0, 8)),
        "fingerprint": ("fingerprint does not match", lambda f: f.attrs.__setitem__("fingerprint", "0" * 16)),
        "zero row": ("splits/val/features: row 2 is all zero", lambda f: f["splits/val/features"].__setitem__(2, 0)),
        "deleted": ("missing dataset splits/test/features", lambda f: f.__delitem__("splits/test/features")),
    }
    for name, (message, damage) in damages.items():
        broken = tmp_path / f"{name.replace('/', '_')}.h5"
        shutil.copy(built, broken)
        with h5py.File(broken, "r+") as f:
            damage(f)
        result = runner.invoke(app, ["cache", "verify", str(broken)])
        assert result.exit_code == 1 and message in result.output, (name, result.output)
    (tmp_path / "junk.h5").write_text("junk")
    result = runner.invoke(app, ["cache", "verify", str(tmp_path / "junk.h5")])
    assert result.exit_code == 1 and "not a readable HDF5 file" in result.output


def test_subset_writes_portable_json(built: Path, coop_dataset, tmp_path: Path) -> None:
    out = tmp_path / "subset.json"
    result = runner.invoke(app, ["cache", "subset", str(built), "--shots", "2", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    subset = json.loads(out.read_text())
    split = json.loads(coop_dataset.split_file.read_text())
    assert len(subset["train"]) == 16 and len(subset["val"]) == 16
    assert all(entry in split["train"] for entry in subset["train"])
    assert all(entry in split["val"] for entry in subset["val"])
    assert (subset["shots"], subset["seed"]) == (2, 1)
    printed = runner.invoke(app, ["cache", "subset", str(built), "--shots", "2", "--seed", "1"])
    assert json.loads(printed.stdout) == subset
    missing = runner.invoke(app, ["cache", "subset", str(built), "--shots", "4", "--seed", "1"])
    assert missing.exit_code == 1 and "holds no few-shot subset with shots=4 seed=1" in missing.output
    # a seed no build can draw is the usage error of every seed flag (exit 2), not "rebuild with --seeds that include
    # it", which the build then refuses
    for seed in (-1, 2**32):
        refused = runner.invoke(app, ["cache", "subset", str(built), "--shots", "2", "--seed", str(seed)])
        assert refused.exit_code == 2, refused.output
        assert refused.output.startswith(f"error: --seed {seed}: a seed is an integer from 0 to {2**32 - 1}")


def test_user_errors_exit_with_a_message_and_no_traceback(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    cases = [
        (["cache", "build", "--root", str(tmp_path), "--dataset", "oxford_pets"], 1,
         "oxford_pets/images/"),
        (["cache", "build", "--root", str(tmp_path), "--dataset", "pets"], 2, "unknown dataset 'pets'"),
        (["cache", "build", "--root", str(tmp_path)], 2, "--dataset is required"),
        (_build_args(coop_dataset, tiny_clip, "--shots", "one"), 2, "--shots 'one': expected comma-separated"),
        (_build_args(coop_dataset, tiny_clip, "--shots", "0"), 2, "shot counts >= 1"),
        (_build_args(coop_dataset, tiny_clip, "--views", "-1"), 2, "--views -1: must be at least 0"),
        (_build_args(coop_dataset, tiny_clip, "--attributes", str(tmp_path / "no.txt")), 1, "cannot be read"),
        (_build_args(coop_dataset, tiny_clip, "--template", "photo"), 2, "must contain '{}' exactly once"),
        (_build_args(coop_dataset, tiny_clip, "--precision", "fp8"), 2, "--precision 'fp8' is not valid"),
        (["cache", "info", str(tmp_path / "none.h5")], 1, "does not exist"),
        (_build_args(coop_dataset, tiny_clip, "--out", str(tmp_path)), 1,  # a folder: the dataset's file in it
         f"--out {tmp_path} is a folder; give the cache file's path, e.g. {tmp_path / 'Shapes.h5'}"),
    ]
    for command in ("info", "verify"):  # the path named once
        result = runner.invoke(app, ["cache", command, str(tmp_path / "none.h5")])
        assert result.exit_code == 1 and result.output.strip() == (
            f"error: cache file {tmp_path / 'none.h5'} does not exist; build one with `lathadapter cache build`")
    for args, code, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    (tmp_path / "oxford_pets").mkdir()
    result = runner.invoke(app, ["cache", "build", "--root", str(tmp_path), "--dataset", "oxford_pets"])
    assert result.exit_code == 1 and "split_zhou_OxfordPets.json not found" in result.output


def test_files_that_are_not_images_are_named_before_any_image_is_encoded(coop_dataset, tiny_clip,
                                                                         tmp_path: Path) -> None:
    """A split file listing an empty file, macOS's AppleDouble `._` file, `Thumbs.db` and a text file: one error line
    counting them and naming the first three (in split order) with why, exit 1, no traceback, and no `.tmp` that a
    rerun would take for a started build. They failed one at a time as the encoder met them (the test split's last),
    each after a `.tmp` was written."""
    folder = tmp_path / "data"
    shutil.copytree(coop_dataset.folder, folder)
    split_file = folder / coop_dataset.split_file.name
    split = json.loads(split_file.read_text())
    image = Path(split["test"][0][0])
    litter = {"empty.jpg": b"", f"._{image.name}": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X",
              "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "notes.txt": b"taken on holiday"}
    for name, content in litter.items():
        (folder / image.parent / name).write_bytes(content)
        split["test"].append([(image.parent / name).as_posix(), 0, split["test"][0][2]])
    split_file.write_text(json.dumps(split))
    out = tmp_path / "c.h5"
    args = _build_args(coop_dataset, tiny_clip, "--out", str(out))
    args[args.index("--dataset") + 1] = f"split:{split_file}"
    result = runner.invoke(app, args)
    named = [f"{folder / image.parent / name} ({why})" for name, why in (
        ("empty.jpg", "an empty file"), (f"._{image.name}", "not an image file Pillow can read"),
        ("Thumbs.db", "not an image file Pillow can read"))]
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"error: 4 of the images listed by the split file {split_file} cannot be read: {', '.join(named)} ...; " \
           "fix or remove them, or pass --skip-bad to leave them out (they are listed in the cache)\n" in result.output
    assert not out.exists() and not out.with_name("c.h5.tmp").exists()
    result = runner.invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0 and "skipped 4 unreadable images" in result.output, result.output


def test_a_checkpoint_that_is_not_the_models_weights_is_one_error_line(coop_dataset, tiny_clip,
                                                                      tmp_path: Path) -> None:
    """A checkpoint of another model (a wider text tower), an empty file and a foreign file each end in one line
    naming --pretrained and --model, exit 1, before anything is written; they were a traceback (open_clip's assert),
    click's bare "Aborted!" (EOFError) and an unpickling traceback."""
    wider = tmp_path / "wider.json"
    config = json.loads(tiny_clip.config.read_text())
    config["text_cfg"]["width"] = 32
    wider.write_text(json.dumps(config))
    empty, foreign = tmp_path / "empty.pt", tmp_path / "foreign.pt"
    empty.write_bytes(b"")
    foreign.write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint" * 40)
    out = tmp_path / "c.h5"
    for model, checkpoint in ((wider, tiny_clip.checkpoint), (tiny_clip.config, empty),
                              (tiny_clip.config, foreign)):
        args = _build_args(coop_dataset, tiny_clip, "--out", str(out))
        args[args.index("--model") + 1], args[args.index("--pretrained") + 1] = str(model), str(checkpoint)
        result = runner.invoke(app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: --pretrained {checkpoint}: cannot load it as the weights of --model "
                                   f"{model.stem} ("), result.output
        assert lines[0].endswith("or a checkpoint of this model") and len(lines[0]) < 600, result.output
        assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


def test_the_text_encoding_shows_progress_before_the_images(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    """The prompts and attribute phrases are encoded first, as a task of their own: on a CPU a ViT-B-16 takes about
    0.1 s a prompt (minutes for ImageNet), which sat silent before the first image line."""
    out = tmp_path / "c.h5"
    args = _build_args(coop_dataset, tiny_clip, "--out", str(out))
    args.remove("--no-progress")
    result = runner.invoke(app, args)  # stderr is not a terminal here: plain progress lines
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        prompts = len(f["text/templates"]) * len(f["classes/names"]) + len(f["attributes/phrases"])
    lines = result.output.splitlines()
    first, last = (next(i for i, line in enumerate(lines) if line.startswith(f"text: {done}/{prompts} prompts "))
                   for done in (0, prompts))
    assert first < last < next(i for i, line in enumerate(lines) if line.startswith("train: 0/")), result.output


def test_rebuild_over_another_cache_needs_force(built: Path, coop_dataset, tiny_clip, tmp_path: Path) -> None:
    out = tmp_path / "copy.h5"
    shutil.copy(built, out)
    same = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--out", str(out)))
    assert same.exit_code == 0 and "up to date" in same.output, same.output
    for val in ("subset", "subsets"):  # the default's name, and its name before stop 27: the same fingerprint
        same = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--out", str(out), "--val", val))
        assert same.exit_code == 0 and "up to date" in same.output, same.output
    assert "note: --val subsets is now called subset" in same.stderr
    other = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--out", str(out), "--seed", "5"))
    assert other.exit_code == 1 and "differs in: seed" in other.output and "--force" in other.output
    forced = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--out", str(out), "--seed", "5", "--force"))
    assert forced.exit_code == 0 and "built" in forced.output, forced.output


@pytest.mark.parametrize(("extra", "message"), [
    (["--precision", "fp64"], "--precision 'fp64' is not valid; valid: fp32, fp16, bf16, amp"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--val", "some"], "--val 'some' is not valid; choose subset (the few-shot val subsets only) or split"),
    (["--model", "ViT-X-99"], "--model 'ViT-X-99' is not an open_clip model name"),
    (["--model", "ViT-B-32", "--pretrained", "openaii"], "--pretrained 'openaii' is not a pretrained tag of ViT-B-32"),
    (["--crop-scale", "1,0.5"], "--crop-scale 1,0.5: need 0 < low ≤ high ≤ 1"),
    (["--crop-scale", "abc"], "--crop-scale 'abc': expected two comma-separated numbers"),
    (["--flip", "2"], "--flip 2: a probability"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1)"),
    (["--seeds", "-1"], "--seeds -1: a seed is an integer from 0 to 4294967295"),  # built, and fit on, before
    (["--seeds", "1,4294967296"], "--seeds 4294967296: a seed is an integer from 0 to 4294967295"),
    (["--seed", "-1"], "--seed -1: a seed is an integer from 0 to 4294967295"),
])
def test_bad_build_values_are_usage_mistakes_refused_before_anything_is_written(coop_dataset, tiny_clip,
                                                                                tmp_path: Path, extra: list[str],
                                                                                message: str) -> None:
    out = tmp_path / "new" / "c.h5"
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--out", str(out), *extra))
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(f"error: {message}") and "\n" not in result.output.strip()
    assert not (tmp_path / "new").exists()  # no folder, no lock, no .tmp


def test_a_split_file_that_is_not_utf8_is_one_error_line_before_anything_is_written(coop_dataset, tiny_clip,
                                                                                       tmp_path: Path) -> None:
    """A Latin-1 split file: the file, its line and byte, and the fix, in one line (exit 1: the data, not an option,
    is at fault); it was the codec's message in parentheses."""
    split = json.loads(coop_dataset.split_file.read_text())
    split["test"][0][2] = split["train"][0][2] = "cercle_é"  # a class renamed in Latin-1
    latin = tmp_path / "split_zhou_Latin.json"
    text = json.dumps(split, ensure_ascii=False)
    latin.write_bytes(text.encode("latin-1"))
    out = tmp_path / "new" / "c.h5"
    args = _build_args(coop_dataset, tiny_clip, "--out", str(out))
    args[args.index(f"split:{coop_dataset.split_file}")] = f"split:{latin}"
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.output == (
        f"error: {latin}: line 1: byte 0xe9 at offset {text.index('é')} is not UTF-8; save the file as UTF-8 (e.g. "
        "`iconv -f latin1 -t utf-8`)\n")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("case", ["empty test list", "a class without test images", "empty test class folders"])
def test_a_dataset_whose_test_split_lacks_images_is_refused_before_anything_is_written(coop_dataset, tiny_clip,
                                                                                      tmp_path: Path,
                                                                                      case: str) -> None:
    """Such a cache built, and `fit` on it ended in a ZeroDivisionError traceback after training (its accuracy over
    no test images, or the novel half's in base-to-novel)."""
    split = json.loads(coop_dataset.split_file.read_text())
    if case == "empty test class folders":  # a folder: tree whose test/<class>/ folders hold no image
        tree = tmp_path / "tree"
        for path, _, name in split["train"]:
            (tree / "train" / name).mkdir(parents=True, exist_ok=True)
            (tree / "test" / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(coop_dataset.folder / path, tree / "train" / name)
        dataset, missing = f"folder:{tree}", "its test split is empty"
    else:
        last = coop_dataset.classes[-1]
        split["test"] = [] if case == "empty test list" else [item for item in split["test"] if item[2] != last]
        path = tmp_path / f"split_zhou_{case.replace(' ', '_')}.json"  # refused before its images are looked for
        path.write_text(json.dumps(split))
        dataset = f"split:{path}"
        missing = ("its test split is empty" if case == "empty test list" else
                   f"its test split has no image of 1 of {len(coop_dataset.classes)} classes ({last!r})")
    out = tmp_path / "new" / "c.h5"
    args = _build_args(coop_dataset, tiny_clip, "--out", str(out))
    args[args.index(f"split:{coop_dataset.split_file}")] = dataset
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.output == (
        f"error: --dataset {dataset}: {missing}; every class needs test images (a split file's \"test\" list, a "
        "folder: tree's test/<class>/ images)\n"), result.output
    assert not (tmp_path / "new").exists()


def test_an_unknown_dataset_name_is_a_usage_mistake(tmp_path: Path) -> None:
    result = runner.invoke(app, ["cache", "build", "--root", str(tmp_path), "--dataset", "caltech", "--out",
                                 str(tmp_path / "new" / "c.h5")])
    assert result.exit_code == 2 and "unknown dataset 'caltech'; valid: imagenet, caltech101" in result.output
    assert not (tmp_path / "new").exists()


@pytest.fixture
def demo_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """`cache build` with no --dataset, its demo dataset and build recorded instead of done (in `tmp_path`)."""
    from lathadapter.cache.build import BuildResult, BuildStats
    from lathadapter.demo import pipeline

    calls: dict = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "demo_dataset", lambda folder: calls.setdefault("written", folder) / "split.json")

    def build(root, dataset, out, **options):
        calls["build"] = options
        return BuildResult(Path(out), "built", BuildStats())

    monkeypatch.setattr(pipeline, "build", build)
    return calls


def test_the_demo_build_passes_its_options_through(demo_build: dict, tmp_path: Path) -> None:
    from lathadapter.demo.model import bundled_model

    result = runner.invoke(app, ["cache", "build", "--out", "d.h5", "--no-progress"])
    assert result.exit_code == 0, result.output
    defaults = demo_build["build"]
    assert (defaults["val"], defaults["template"], defaults["seed"]) == ("split", bundled_model().template, 0)
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("round\nstriped\n")
    result = runner.invoke(app, ["cache", "build", "--out", "d.h5", "--seed", "5", "--template", "a {} shape.",
                                 "--precision", "bf16", "--val", "subset", "--batch-size", "7", "--full-train",
                                 "--attributes", str(phrases), "--skip-bad", "--views", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    given = demo_build["build"]
    assert {key: given[key] for key in ("seed", "template", "precision", "val", "batch_size", "full_train",
                                        "attributes", "skip_bad", "views")} == {
        "seed": 5, "template": "a {} shape.", "precision": "bf16", "val": "subset", "batch_size": 7,
        "full_train": True, "attributes": phrases, "skip_bad": True, "views": 2}


@pytest.mark.parametrize(("old", "new"), [("subsets", "subset"), ("all", "split")])
def test_the_val_options_old_names_still_work_with_one_note(demo_build: dict, old: str, new: str) -> None:
    """`--val subsets|all`, the names before stop 27, build what `--val subset|split` builds; stderr says the new
    name in one line, and no note comes with the new name."""
    note = f"note: --val {old} is now called {new}; the old name still works"
    result = runner.invoke(app, ["cache", "build", "--out", "d.h5", "--no-progress", "--val", old])
    assert result.exit_code == 0, result.output
    assert demo_build["build"]["val"] == new
    assert [line for line in result.stderr.splitlines() if line.startswith("note:")] == [note]
    result = runner.invoke(app, ["cache", "build", "--out", "d.h5", "--no-progress", "--val", new])
    assert result.exit_code == 0 and demo_build["build"]["val"] == new and "note:" not in result.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["--precision", "fp64"], "--precision 'fp64' is not valid; valid: fp32, fp16, bf16, amp"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--val", "some"], "--val 'some' is not valid"),
    (["--template", "photo"], "--template 'photo' must contain '{}' exactly once"),
    # str.format, as CoOp fills its templates, reads other braces: '{{}}' is a literal '{}' (every class's prompt the
    # same: chance zero-shot), '{style}' a KeyError after the model loaded, a lone '{' a ValueError naming no option
    (["--template", "a photo of a {{}}."], "--template 'a photo of a {{}}.' must contain '{}' exactly once"),
    (["--template", "a {} with {style}."], "--template 'a {} with {style}.' must contain '{}' exactly once"),
    (["--template", "a {} {"], "--template 'a {} {' must contain '{}' exactly once"),
    (["--views", "-1"], "--views -1: must be at least 0"),
    (["--flip", "2"], "--flip 2: a probability"),
    (["--quick-gelu"], "--quick-gelu: not used for the bundled demo dataset"),
    (["--no-quick-gelu"], "--no-quick-gelu: not used for the bundled demo dataset"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1)"),
])
def test_the_demo_build_refuses_bad_values_and_options_it_cannot_use(demo_build: dict, tmp_path: Path,
                                                                     extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["cache", "build", "--out", "caches/d.h5", "--no-progress", *extra])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(f"error: {message}") and "\n" not in result.output.strip()
    assert demo_build == {} and not any(tmp_path.iterdir())  # refused before the demo data was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_the_demo_data_is_written(demo_build: dict,
                                                                                 tmp_path: Path) -> None:
    result = runner.invoke(app, ["cache", "build", "--out", "caches/d.h5", "--no-progress", "--device", "cuda"])
    assert result.exit_code == 1, result.output  # a runtime failure (no GPU here), not a usage mistake
    assert result.output.strip() == "error: --device cuda: CUDA is not available on this machine; use --device cpu"
    assert demo_build == {} and not any(tmp_path.iterdir())


def test_build_many_names_caches_as_cache_build_does_and_refuses_two_on_one_file(coop_dataset, tiny_clip,
                                                                                  tmp_path: Path) -> None:
    common = ["--model", str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint), "--shots", "1",
              "--seeds", "1", "--views", "1", "--device", "cpu"]
    out = tmp_path / "bm"
    result = runner.invoke(app, ["cache", "build-many", "--dataset", f"split:{coop_dataset.split_file}", "--out",
                                 str(out), *common])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["Shapes.h5"]  # split_zhou_Shapes.json: the dataset Shapes
    # each build's progress lines follow a line naming its dataset (the builds' own lines do not)
    announce = f"split:{coop_dataset.split_file} (1/1): building {out / 'Shapes.h5'}"
    assert announce in result.output and result.output.index(announce) < result.output.index("train"), result.output
    for folder in ("fa/imgs", "fb/imgs", "Shapes"):
        (tmp_path / folder).mkdir(parents=True)
    cases = [
        ([f"folder:{tmp_path / 'fa/imgs'}", f"folder:{tmp_path / 'fb/imgs'}"],
         f"--dataset folder:{tmp_path / 'fa/imgs'} and --dataset folder:{tmp_path / 'fb/imgs'} would both be built "
         f"into {tmp_path / 'bm2' / 'imgs.h5'}; build one of them with `lathadapter cache build --dataset ... --out "
         "FILE` instead"),
        ([f"split:{coop_dataset.split_file}", f"folder:{tmp_path / 'Shapes'}"],
         f"--dataset split:{coop_dataset.split_file} and --dataset folder:{tmp_path / 'Shapes'} would both be built "
         f"into {tmp_path / 'bm2' / 'Shapes.h5'}"),
        (["dtd", "dtd"], "--dataset dtd is given twice; give each dataset once"),
    ]
    for datasets, message in cases:
        result = runner.invoke(app, ["cache", "build-many", *[arg for d in datasets for arg in ("--dataset", d)],
                                     "--out", str(tmp_path / "bm2"), *common])
        assert result.exit_code == 2, result.output
        assert result.output.strip().startswith(f"error: {message}") and "\n" not in result.output.strip()
        assert not (tmp_path / "bm2").exists()  # refused before building anything


def test_build_many_prints_each_cache_as_out_gives_it_as_cache_build_does(coop_dataset, tiny_clip, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each built cache is printed as `DATASET: OUT/NAME.h5: STATUS` with OUT as typed: a relative `--out` stays
    relative (it was printed absolute), as `cache build` prints its `--out`; an absolute one stays absolute."""
    monkeypatch.chdir(tmp_path)
    dataset = f"split:{coop_dataset.split_file}"
    common = ["--dataset", dataset, "--model", str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint),
              "--shots", "1", "--seeds", "1", "--views", "1", "--device", "cpu"]
    result = runner.invoke(app, ["cache", "build-many", *common, "--out", "caches"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{dataset}: caches/Shapes.h5: built", result.output
    assert (tmp_path / "caches" / "Shapes.h5").is_file()
    result = runner.invoke(app, ["cache", "build", *common, "--workers", "0", "--no-progress", "--out",
                                 "caches/Shapes.h5"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "caches/Shapes.h5: up to date", result.output
    result = runner.invoke(app, ["cache", "build-many", *common, "--out", str(tmp_path / "caches")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{dataset}: {tmp_path}/caches/Shapes.h5: up to date", result.output


def test_a_root_that_no_dataset_reads_is_a_warning(built: Path, coop_dataset, tiny_clip, tmp_path: Path) -> None:
    """`--root` with a `split:`/`folder:` dataset was ignored silently; `build-many` warns once, and only when none of
    its datasets reads the root (a named one beside them does)."""
    warning = (f"warning: --root {tmp_path} is not read: --dataset split:{coop_dataset.split_file} gives its own "
               "path (a relative one is read from the current folder, not from --root)")
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--out", str(built), "--root", str(tmp_path)))
    assert result.exit_code == 0 and "up to date" in result.output, result.output
    assert result.output.splitlines().count(warning) == 1
    shutil.copy(built, tmp_path / "Shapes.h5")  # up to date for build-many's options below
    many = ["cache", "build-many", "--model", str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint),
            "--shots", "1,2", "--seeds", "1", "--views", "2", "--device", "cpu", "--out", str(tmp_path), "--root",
            str(tmp_path), "--dataset", f"split:{coop_dataset.split_file}"]
    result = runner.invoke(app, many)
    assert result.exit_code == 0 and "Shapes.h5: up to date" in result.output, result.output
    assert [line for line in result.output.splitlines() if "warning" in line] == [warning]  # once, not per build
    result = runner.invoke(app, [*many, "--dataset", f"folder:{tmp_path / 'none'}"])  # missing: refused, after it
    assert result.exit_code == 1 and result.output.startswith(
        f"warning: --root {tmp_path} is not read: every --dataset is a folder: or split: path (a relative one is read "
        "from the current folder, not from --root)\n"), result.output
    result = runner.invoke(app, [*many, "--dataset", "oxford_pets"])  # read under the root (and missing there)
    assert result.exit_code == 1 and "oxford_pets: oxford_pets: " in result.output, result.output
    assert "warning" not in result.output


def test_a_folder_given_as_a_cache_says_so_and_lists_its_caches(built: Path, tmp_path: Path) -> None:
    folder = tmp_path / "caches"
    folder.mkdir()
    commands = [["fit", "--cache", str(folder), "--device", "cpu", "--out", str(tmp_path / "runs")],
                ["cache", "info", str(folder)], ["cache", "verify", str(folder)],
                ["cache", "subset", str(folder), "--shots", "1", "--seed", "1"]]
    for listed in ("it holds no *.h5 cache; pass a cache file, or build one with `lathadapter cache build`",
                   f"pass one of its caches: {folder / 'a.h5'}, {folder / 'b.h5'}"):
        for args in commands:
            result = runner.invoke(app, args)
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            assert result.output.strip() == f"error: {folder} is a folder, not a cache file; {listed}", result.output
            assert "\n" not in result.output.strip()
        shutil.copy(built, folder / "a.h5")
        shutil.copy(built, folder / "b.h5")
    assert not (tmp_path / "runs").exists()


def test_build_many_takes_skip_bad_as_its_error_advises_and_stops_on_sigterm_in_one_line(
        coop_dataset, tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable image stops build-many with the advice to pass --skip-bad, which it now takes (the cache then
    lists the image as skipped); SIGTERM ends it as `cache build`: one line, exit 143 (was the bare signal)."""
    from lathadapter import cli
    from lathadapter.experiments import builds

    folder = tmp_path / "shapes"
    shutil.copytree(coop_dataset.folder, folder)
    split = json.loads(coop_dataset.split_file.read_text())
    bad = split["test"][0][0]
    (folder / bad).write_bytes(b"")  # a zero-byte image
    args = ["cache", "build-many", "--dataset", f"split:{folder / coop_dataset.split_file.name}", "--out",
            str(tmp_path / "bm"), "--model", str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint),
            "--shots", "1", "--seeds", "1", "--views", "1", "--device", "cpu"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "--skip-bad" in refused.output, refused.output
    built = runner.invoke(app, [*args, "--skip-bad"])
    assert built.exit_code == 0, built.output
    with h5py.File(tmp_path / "bm" / "Shapes.h5", "r") as f:
        assert list(f["skipped"].asstr()[()]) == [bad]

    def terminated(*args: object, **kwargs: object) -> None:
        raise cli.Terminated()

    monkeypatch.setattr(builds, "build_many", terminated)
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 143, stopped.output
    assert stopped.output.strip().splitlines()[-1].startswith("interrupted: the caches built are kept")


@pytest.mark.parametrize("layout, out, refused", [
    ("a folder per class", "caches/tree.h5", "caches"),  # `folder:.`'s default --out, in the tree
    ("split folders", "train/caches/tree.h5", "caches"),  # in train/, whose folders are classes
    ("split folders", "caches/tree.h5", None),  # beside train/ and test/: not read
])
def test_an_out_where_a_folder_tree_reads_classes_is_refused_before_anything_is_written(
        coop_dataset, tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, out: str,
        refused: str | None) -> None:
    """`folder:.`'s default cache `caches/<name>.h5` was written inside the tree, and every later build (the rerun that
    finds it up to date, a resume) refused the tree: its `caches/` had become a class folder without images. Rule
    (docs/data.md): a tree's folders (those of train/, val/, test/ when it has train/ and test/) are its classes."""
    split = json.loads(coop_dataset.split_file.read_text())
    tree = tmp_path / "tree"
    for part, items in (("train", split["train"]), ("test", split["test"])):
        for path, _, name in items[:len(items) // 2]:  # the first classes, all their images
            folder = tree / (part if layout == "split folders" else "") / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(coop_dataset.folder / path, folder)
    monkeypatch.chdir(tree)
    before = sorted(tree.rglob("*"))
    args = _build_args(coop_dataset, tiny_clip, "--dataset", "folder:.", "--shots", "1",
                       *(["--out", out] if out != "caches/tree.h5" else []))
    result = runner.invoke(app, args)
    if refused:
        assert result.exit_code == 1 and result.output == (
            f"error: --out {out} lies inside folder:., whose folders are its classes: a rerun or a resumed build "
            f"would read {refused!r} as one; give an --out outside the tree, e.g. --out "
            f"{tmp_path / 'caches' / 'tree.h5'}\n"), result.output
        assert sorted(tree.rglob("*")) == before  # no caches/ folder made
        return
    assert result.exit_code == 0 and (tree / out).is_file(), result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "is up to date" in again.output, again.output


def test_a_tree_that_already_holds_a_cache_says_to_move_it_out(coop_dataset, tiny_clip, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache written inside a `folder:` tree before its `--out` was refused there (the default `caches/<name>.h5`
    of `folder:.`) makes `caches/` a class folder without images: the refusal names the cache and what to do."""
    split = json.loads(coop_dataset.split_file.read_text())
    tree = tmp_path / "tree"
    for path, _, name in split["train"] + split["test"]:
        (tree / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(coop_dataset.folder / path, tree / name)
    (tree / "caches").mkdir()
    (tree / "caches" / "tree.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.chdir(tree)
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, "--dataset", "folder:.", "--shots", "1",
                                            "--out", str(tmp_path / "out.h5")))
    assert result.exit_code == 1, result.output
    assert "class folder 'caches' has 0 images" in result.output
    assert "it holds a feature cache (tree.h5), not images: move it out of the tree" in result.output
    assert "Traceback" not in result.output
