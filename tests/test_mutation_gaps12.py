"""Behaviours that a twelfth mutation campaign (stop 28) found untested, in modules no earlier campaign ran (the
execution settings, the demo world, `compare --plot`): each test here fails on a mutant that the rest of the suite let
pass, and checks the code against an independent oracle (a documented rule restated, a hand-built input with a known
answer; for plots, what matplotlib was asked to draw)."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from lathadapter.adapter.options import OptionError
from lathadapter.demo import pipeline, write_demo_dataset
from lathadapter.demo.evaluate import zero_shot_accuracy
from lathadapter.demo.figures import read_features, zero_shot
from lathadapter.experiments import machine, plots
from lathadapter.experiments.execution import Execution, RayOptions

# ------------------------------------------------------------------------------------------ the execution settings


@pytest.mark.parametrize(("options", "message"), [
    ({"trainers": 0}, "--trainers 0: must be at least 1"),
    ({"batch_runs": 0}, "--batch-runs 0: must be at least 1"),
    ({"device": None}, "the local backend trains on a device named in advance"),
    ({"graphs": "maybe"}, "graphs='maybe' is not valid"),
])
def test_the_dataclass_refuses_what_the_command_line_would(options: dict, message: str) -> None:
    """A Python caller's `Execution(...)` is checked as the command line is: no trainer threads, no runs a batch, the
    local backend without a device, a graphs value outside auto/on/off."""
    with pytest.raises(OptionError, match=message):
        Execution(**options)


def test_a_whole_gpu_per_chunk_task_is_allowed() -> None:
    """`--gpus-per-chunk` is in (0, 1]: 1 (a GPU a chunk task) is valid, above 1 is not."""
    assert RayOptions(gpus_per_chunk=1.0).gpus_per_chunk == 1.0
    with pytest.raises(OptionError, match=r"--gpus-per-chunk 1.5: must be in \(0, 1\]"):
        RayOptions(gpus_per_chunk=1.5)


@pytest.mark.parametrize(("option", "value"), [("chunk_size", 0), ("gpus_per_chunk", 0.0)])
def test_a_ray_option_of_zero_on_the_local_backend_is_refused_not_ignored(option: str, value: float) -> None:
    """`--chunk-size 0` or `--gpus-per-chunk 0` without `--backend ray` is a Ray option given to the local backend:
    refused like any other value, not let through as if it were absent."""
    with pytest.raises(OptionError, match="only for --backend ray"):
        Execution.parse(device="cpu", **{option: value})


def test_the_cpu_refuses_more_than_one_trainer_thread() -> None:
    """Trainer threads share a GPU; on the CPU, `--trainers 2` is refused (threads and workers share the cores)."""
    with pytest.raises(OptionError, match="--trainers 2: trainer threads share a GPU"):
        Execution.parse(device="cpu", trainers=2)


def test_workers_up_to_the_cpus_are_kept_and_beyond_are_lowered_with_a_warning(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """docs/usage.md: `--workers` above the process's CPUs is lowered to them, with a warning; as many as the CPUs is
    no warning; one worker with `--threads` uses those threads, so says nothing either."""
    monkeypatch.setattr(machine, "available_cpus", lambda: 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Execution.parse(device="cpu", workers=4).workers == 4
        assert Execution.parse(device="cpu", workers=1, threads=2).workers == 1
    with pytest.warns(UserWarning, match="--workers 5: this process may use 4 CPUs; starting 4 workers"):
        assert Execution.parse(device="cpu", workers=5).workers == 4


def test_ray_defaults_are_one_driver_process_and_chunks_of_eight() -> None:
    """docs/usage.md, "Grids on a Ray cluster": one driver process, chunks of 8 runs unless `--chunk-size` says; the
    record of a run names the cluster's options."""
    execution = Execution.parse(device="cpu", backend="ray")
    assert execution.workers == 1 and execution.ray.chunk_size == 8
    record = Execution.parse(device="cpu", backend="ray", chunk_size=3).record("cpu")
    assert record["ray"] == {"address": None, "chunk_size": 3, "gpus_per_chunk": None}


def test_a_gpu_trains_on_four_trainer_threads_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/usage.md, "On a GPU": each process trains on `--trainers T` threads, default 4; given, T is kept."""
    monkeypatch.setattr(machine, "resolve_device", lambda device: "cuda")
    assert Execution.parse().trainers == 4
    assert Execution(trainers=2).trainers_on("cuda") == 2


def test_the_record_keeps_stacking_and_graphs_apart_and_a_batch_mode_only_when_known() -> None:
    """`stack` and `graphs` are recorded each as its own choice resolved on the device (`on` forces either on the CPU
    too), and `batch_mode` only when the run's is known."""
    record = Execution(stack="on", graphs="off").record("cpu")
    assert (record["stack"], record["graphs"]) == ("on", "off")
    assert "batch_mode" not in record and Execution().record("cpu", batch_mode="lockstep")["batch_mode"] == "lockstep"


# ------------------------------------------------------------------------------------------ compare --plot


def _cell(label: str, *seeds: float) -> SimpleNamespace:
    """A dataset's cell of a comparison: A − B of each seed and of their mean; none: `n/a`."""
    return SimpleNamespace(label=label, paired=[SimpleNamespace(difference=d) for d in seeds], mean_a=70.0,
                           difference=sum(seeds) / len(seeds) if seeds else None)


def _part(part: str, shots: int, cells: list[SimpleNamespace], test: SimpleNamespace | None) -> SimpleNamespace:
    return SimpleNamespace(part=part, shots=shots, datasets=cells, test=test,
                           compared=[c for c in cells if c.difference is not None])


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Figure:
    """The figure `plot_comparison` asks to save for four hand-built panels (the third's datasets all tied, the
    fourth's a single dataset)."""
    figures: list[Figure] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    parts = [_part("all", 16, [_cell("pets", 1.0, 2.0), _cell("cars"), _cell("food", -0.5, -1.5)],
                   SimpleNamespace(p=0.5, n=2)),
             _part("base", 16, [_cell("pets", 0.5)], SimpleNamespace(p=1.0, n=1)),
             _part("novel", 4, [_cell("pets", 0.0), _cell("food", 0.0)], SimpleNamespace(p=1.0, n=0)),
             _part("hm", 1, [_cell("pets", 3.0)], None)]
    plots.plot_comparison(SimpleNamespace(parts=parts, labels_a=("lambda_hier=0",), labels_b=("lambda_hier=0.1",)),
                          tmp_path / "diff.png")
    return figures[0]


def test_compare_plot_draws_three_panels_a_row_and_blanks_the_rest(drawn: Figure) -> None:
    """Four panels: two rows of three, the two unused axes switched off."""
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in drawn.axes] == [(2, 3)] * 6
    assert [ax.axison for ax in drawn.axes] == [True] * 4 + [False] * 2


def test_compare_plot_draws_seeds_means_and_the_zero_line_a_row_per_dataset_top_down(drawn: Figure) -> None:
    """docs/usage.md: a row per dataset (the first on top), A − B of each seed as a dot, of the seed means as a
    diamond, the zero line; a dataset without a difference says `n/a` in its row."""
    ax = drawn.axes[0]
    lines = [(line.get_marker(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]
    assert ("o", [1.0, 2.0], [0, 0]) in lines and ("D", [1.5], [0]) in lines
    assert ("o", [-0.5, -1.5], [2, 2]) in lines and ("D", [-1.0], [2]) in lines
    assert any(list(line.get_xdata()) == [0.0, 0.0] and line.get_marker() not in ("o", "D") for line in ax.lines)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pets", "cars", "food"]
    assert ax.get_ylim() == (2.5, -0.5)  # top to bottom
    assert [(t.get_text(), t.xy[1]) for t in ax.texts] == [("n/a", 1)]
    assert ax.get_xlabel() == "A − B (points)"


def test_compare_plot_titles_say_the_test_and_the_legend_each_marker_once(drawn: Figure) -> None:
    """Panel titles: part, shots and the Wilcoxon p with its n of nonzero differences; `every difference 0`; `one
    dataset: no test`. The figure: A's and B's labels; one legend entry for the seeds and one for the means."""
    assert [ax.get_title() for ax in drawn.axes[:4]] == [
        "all, 16 shots: Wilcoxon p = 0.5 (n = 2)", "base, 16 shots: Wilcoxon p = 1 (n = 1)",
        "novel, 4 shots: every difference 0", "hm, 1 shot: one dataset: no test"]
    assert drawn.get_suptitle().replace("\n", " ") == "A − B: A = lambda_hier=0, B = lambda_hier=0.1"
    assert [t.get_text() for t in drawn.legends[0].get_texts()] == ["seed", "seed mean"]


# ------------------------------------------------------------------------------------------ the demo world


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo"))


def test_the_demo_dataset_holds_24_train_16_val_and_24_test_images_a_class_each_its_own(demo_split: Path) -> None:
    """docs/data.md, "The built-in worlds": 36 classes; 24 train, 16 val and 24 test images a class, 48 px, each a
    file of its own (the 12 later val images a class are added, not written over earlier ones); plain light and
    dark backgrounds."""
    split = json.loads(demo_split.read_text())
    for part, count in (("train", 24), ("val", 16), ("test", 24)):
        assert Counter(label for _, label, _ in split[part]) == dict.fromkeys(range(36), count), part
    paths = [path for part in split.values() for path, _, _ in part]
    assert len(set(paths)) == len(paths) == 36 * 64
    assert len(list((demo_split.parent / "images").rglob("*.png"))) == 36 * 64
    assert {Image.open(demo_split.parent / path).size for path in paths[::97]} == {(48, 48)}
    records = json.loads((demo_split.parent / "attributes_DemoShapes.json").read_text())
    for part in ("train", "test"):
        assert {records[path]["background"] for path, _, _ in split[part]} == {"light", "dark"}, part


def test_the_demo_data_folder_is_named_by_the_world_version() -> None:
    """docs/data.md: `cache build` with no dataset writes the demo images under `data/demo-shapes-v3/`."""
    assert Path("data") / "demo-shapes-v3" == pipeline.DEMO_DATA_DIR


@pytest.mark.parametrize(("methods", "shots", "seeds", "tune", "message"), [
    ([], [1], [1], None, r"--method \(none\): unknown method"),
    (["zeroshot"], [0, 1], [1], None, "--shots 0,1: shots per class must be at least 1"),
    (["zeroshot"], [1], [], None, "--seeds: give one or more seeds"),
    (["zeroshot"], [1], [1], "everything", "--tune-preset everything: unknown preset"),
])
def test_the_demo_refuses_bad_options_before_building(methods: list[str], shots: list[int], seeds: list[int],
                                                      tune: str | None, message: str) -> None:
    """`lathadapter demo` checks its methods, shots, seeds and tuning preset first, naming the option typed."""
    with pytest.raises(OptionError, match=message):
        pipeline.check_demo_options(methods, shots, seeds, tune)


def test_a_demo_folder_without_its_attribute_file_is_not_whole(tmp_path: Path) -> None:
    """A demo dataset is whole when its split file reads and its attribute file is there (written before the split):
    a readable split file alone is a damaged folder, written again."""
    (tmp_path / "split_zhou_DemoShapes.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    assert not pipeline._whole(tmp_path)
    (tmp_path / "attributes_DemoShapes.json").write_text("{}")
    assert pipeline._whole(tmp_path)


class _FeaturesAsIs(torch.nn.Module):
    """A stand-in model whose image and text features are its inputs, so scores are set by hand."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


def test_zero_shot_of_an_odd_class_count_puts_the_middle_class_in_the_base_half(tmp_path: Path) -> None:
    """Five classes: the first ceil(5/2) = 3 are base. Image features by hand (class k's text feature is e_k): the
    third class's image scores the fourth class highest overall, its own within the base half. Chance within a half is
    one over its classes; `images` counts the test images (six: two of the first class); a subset holding none of the
    images is an error."""
    eye = torch.eye(5)
    features = [eye[0], eye[0], eye[1], 0.9 * eye[3] + 0.5 * eye[2], eye[3], eye[4]]
    items = []
    for index, (label, name) in enumerate(zip([0, 0, 1, 2, 3, 4], "aabcde", strict=True)):
        Image.new("RGB", (1, 1), (index, 0, 0)).save(tmp_path / f"{index}.png")
        items.append([f"{index}.png", label, name])
    split_file = tmp_path / "split_zhou_Toy.json"
    split_file.write_text(json.dumps({"train": [], "val": [], "test": items}))

    def preprocess(image: Image.Image) -> torch.Tensor:
        return features[image.getpixel((0, 0))[0]]

    result = zero_shot_accuracy(_FeaturesAsIs(), preprocess, lambda prompts: torch.eye(len(prompts)), split_file, "{}")
    assert result["all"] == pytest.approx(5 / 6) and result["base"] == 1.0 and result["novel"] == 1.0
    assert result["chance_base"] == pytest.approx(1 / 3) and result["chance_novel"] == 0.5 and result["images"] == 6
    with pytest.raises(ValueError, match="holds none of the test images"):
        zero_shot_accuracy(_FeaturesAsIs(), preprocess, lambda prompts: torch.eye(len(prompts)), split_file, "{}",
                           subsets={"elsewhere": {"other.png"}})


def test_the_world_figures_drop_skipped_rows_and_score_novel_images_among_the_last_half(tmp_path: Path) -> None:
    """`read_features` drops all-zero rows (images left out by --skip-bad); `zero_shot` scores novel test images
    (labels from ceil(3/2) = 2 on) among the novel classes alone. By hand: the novel image scores the first class
    highest overall, its own among the novel ones; the second class's image is base, so its miss is no novel miss."""
    eye = np.eye(3, dtype=np.float32)
    test = np.stack([eye[0], 0.9 * eye[2] + 0.5 * eye[1], 0.9 * eye[0] + 0.5 * eye[2], np.zeros(3, np.float32)])
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for name, rows, labels in (("train", eye, [0, 1, 2]), ("test", test, [0, 1, 2, 1])):
            f[f"splits/{name}/features"] = rows
            f[f"splits/{name}/labels"] = np.asarray(labels)
        f["text/features"] = eye[None]
    features = read_features(tmp_path / "c.h5")
    assert features.test_labels.tolist() == [0, 1, 2]
    overall, novel = zero_shot(features)
    assert overall == pytest.approx(1 / 3) and novel == 1.0
