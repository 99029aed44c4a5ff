"""Behaviours that an eighth mutation campaign (stop 27) found untested, in modules no earlier campaign mutated (the
cache file's schema, its writes and its reader, `cache verify` and `cache info`, the results table, a grid's cache
checks, `compare`'s and `inspect`'s lines, and the resumed build's open gaps of the sixth campaign): each test here
fails on a mutant that the rest of the suite let pass, and checks the code against an independent oracle (the schema
as `docs/data.md` documents it restated, a hand-built cache or input with a known answer)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lathadapter.cache.store import (
    CacheError,
    CacheLayout,
    CacheReader,
    RawNorms,
    create,
    finalize,
    missing_rows,
    seed_error,
    unwritten_rows,
    write_cache,
    write_rows,
)

# ------------------------------------------------------------------------------------------ a cache built by hand

NAMES, DIM, VIEWS = ["ant", "bee", "cat", "dog"], 8, 2
LABELS = {"train": [0, 0, 1, 1, 2, 2, 3, 3], "val": [0, 1, 2, 3, 0, 1, 2, 3], "test": [3, 2, 1, 0]}
# Two subsets whose train rows are not increasing (Dassl's draw order) and whose val rows differ
SUBSETS = {(1, 1): ([6, 0, 5, 3], [0, 1, 2, 3]), (1, 2): ([1, 2, 7, 4], [4, 5, 6, 7])}
VAL_SHOTS = {(1, 1): [4, 1, 6, 3], (1, 2): [0, 5, 2, 7]}
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal((*shape, DIM))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hand_cache(path: Path, *, whole_val: bool = False, attributes: int = 0,
                fields: dict[str, object] | None = None) -> dict[str, np.ndarray]:
    """A 4-class cache written through `write_cache` from known vectors and raw norms (each norm distinct), with
    wnids, two subsets and, for `whole_val`, LP++'s val sets (`fields` added to its fingerprint); returns what was
    written."""
    rng = np.random.default_rng(0)
    counts = {split: len(labels) for split, labels in LABELS.items()}
    # keys deliberately out of order: the stored JSON is sorted; `val` in the schema's spelling (`all`: the whole split)
    fingerprint = {"model": "hand", "dataset": "hand", "val": "all" if whole_val else "subsets",
                   **(fields or {})}
    layout = CacheLayout(fingerprint=fingerprint, class_names=NAMES, embed_dim=DIM, views=VIEWS,
                         paths={s: [f"{s}/{i}.png" for i in range(n)] for s, n in counts.items()},
                         labels=LABELS, subsets=SUBSETS, templates=TEMPLATES,
                         attribute_phrases=[f"phrase {i}" for i in range(attributes)],
                         wnids=["n01", "n02", "n03", "n04"], val_shots=VAL_SHOTS if whole_val else {})
    written = {f"features/{s}": _unit(rng, n) for s, n in counts.items()}
    written["augmented"] = _unit(rng, counts["train"], VIEWS)
    written["text"] = _unit(rng, len(TEMPLATES), len(NAMES))
    written["attributes"] = _unit(rng, attributes)
    norms = RawNorms({s: 5 + rng.random(n) for s, n in counts.items()}, 9 + rng.random((counts["train"], VIEWS)),
                     7 + rng.random((len(TEMPLATES), len(NAMES))), 3 + rng.random(attributes))
    write_cache(path, layout, {s: written[f"features/{s}"] for s in counts}, written["augmented"], written["text"],
                written["attributes"], norms)
    written.update({f"norms/{s}": v for s, v in norms.splits.items()}, augmented_norms=norms.augmented,
                   text_norms=norms.text, attribute_norms=norms.attributes)
    return written


def _f16(x: np.ndarray) -> torch.Tensor:
    """What the cache stores of a unit vector: its float16 rounding, read as float32."""
    return torch.from_numpy(x.astype(np.float16).astype(np.float32))


# ------------------------------------------------------------------------------------------ the schema


def test_the_fingerprint_is_16_hex_of_the_sha256_of_the_stored_sorted_json(tmp_path: Path) -> None:
    """docs/data.md: `fingerprint` is 16 hex chars of the SHA-256 of `fingerprint_json` (JSON with sorted keys)."""
    _hand_cache(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        text = f.attrs["fingerprint_json"]
        assert list(json.loads(text)) == sorted(json.loads(text))
        assert f.attrs["fingerprint"] == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_wnids_and_lpp_val_sets_are_stored_and_read_back(tmp_path: Path) -> None:
    """`classes/wnids` holds the given wnids; `subsets/…/val_shots` LP++'s rows, in draw order (docs/data.md)."""
    _hand_cache(tmp_path / "c.h5", whole_val=True)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert [w.decode() for w in f["classes/wnids"][()]] == ["n01", "n02", "n03", "n04"]
        assert f["subsets/shots_1_seed_2/val_shots"][()].tolist() == VAL_SHOTS[1, 2]
    with CacheReader(tmp_path / "c.h5") as reader:
        assert reader.classes()[1] == ["n01", "n02", "n03", "n04"]
        assert reader.info().val_shots
        assert reader.val_shots_rows(1, 2).tolist() == VAL_SHOTS[1, 2]


def test_rows_are_flagged_encoded_only_after_their_features_are_written(tmp_path: Path) -> None:
    """`write_rows` flags rows last: a write that fails leaves them for a resumed build to redo (`missing_rows`)."""
    layout = CacheLayout({"dataset": "hand"}, NAMES, DIM, VIEWS, {s: ["x"] * len(v) for s, v in LABELS.items()},
                         LABELS, {}, TEMPLATES)
    f = create(tmp_path / "c.tmp", layout)
    try:
        with pytest.raises((TypeError, ValueError)):  # the features of 3 rows given for 2
            write_rows(f, "val", np.array([1, 2]), _unit(np.random.default_rng(0), 3), norms=np.ones(2))
        assert missing_rows(f, "val").tolist() == list(range(8))
        with pytest.raises(ValueError, match="raw norms"):
            write_rows(f, "val", np.array([1, 2]), _unit(np.random.default_rng(0), 2))
        assert missing_rows(f, "val").tolist() == list(range(8))
    finally:
        f.close()


def _damage(path: Path, change) -> None:  # noqa: ANN001
    with h5py.File(path, "r+") as f:
        change(f)


def test_encoded_rows_with_a_zero_raw_norm_or_a_short_view_are_unwritten(tmp_path: Path) -> None:
    """`unwritten_rows`: a row flagged encoded whose raw norm is not positive, or one of whose views is not unit norm,
    did not reach the disk whole (a resumed build encodes it again)."""
    _hand_cache(tmp_path / "c.h5")

    def change(f: h5py.File) -> None:
        f["splits/train/norms"][2] = 0.0
        f["splits/train/augmented"][5, 1] = np.zeros(DIM, dtype=np.float16)

    _damage(tmp_path / "c.h5", change)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert unwritten_rows(f, "train").tolist() == [2, 5]
        assert unwritten_rows(f, "val").tolist() == []


def _unfinished(tmp_path: Path) -> tuple[h5py.File, CacheLayout]:
    """A cache file created and fully written but not finalised."""
    layout = CacheLayout({"dataset": "hand"}, NAMES, DIM, 0, {s: [f"{s}{i}" for i in range(len(v))]
                                                             for s, v in LABELS.items()}, LABELS, {}, TEMPLATES)
    f = create(tmp_path / "c.tmp", layout)
    rng = np.random.default_rng(0)
    for split, labels in LABELS.items():
        n = len(labels)
        write_rows(f, split, np.arange(n), _unit(rng, n), np.zeros((n, 0, DIM)), np.ones(n), np.ones((n, 0)))
    return f, layout


def test_finalize_refuses_rows_not_encoded_or_not_on_disk(tmp_path: Path) -> None:
    """`finalize` moves nothing into place while a row is not encoded, or is flagged encoded but all zero."""
    f, _ = _unfinished(tmp_path)
    encoded = f["splits/test/encoded"][:]
    encoded[1] = False
    f["splits/test/encoded"][:] = encoded
    with pytest.raises(CacheError, match="1 test rows are not encoded"):
        finalize(f, tmp_path / "c.tmp", tmp_path / "c.h5")
    f.close()
    assert not (tmp_path / "c.h5").exists()

    f, _ = _unfinished(tmp_path)
    f["splits/val/features"][3] = np.zeros(DIM, dtype=np.float16)  # flagged encoded, as a lost write leaves it
    with pytest.raises(CacheError, match="1 val rows did not reach the disk"):
        finalize(f, tmp_path / "c.tmp", tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()


def test_the_reader_refuses_an_unfinished_cache_and_an_unknown_schema(tmp_path: Path) -> None:
    f, _ = _unfinished(tmp_path)
    f.close()
    with pytest.raises(CacheError, match="incomplete cache"):
        CacheReader(tmp_path / "c.tmp")
    _hand_cache(tmp_path / "c.h5")
    _damage(tmp_path / "c.h5", lambda f: f.attrs.__setitem__("schema_version", 3))
    with pytest.raises(CacheError, match="schema version 3"):
        CacheReader(tmp_path / "c.h5")


def test_a_schema_1_cache_gives_no_raw_features(tmp_path: Path) -> None:
    """Schema 1 stores no raw norms (docs/data.md): its data has no `text_raw`, `template_raw` or view norms, whatever
    datasets the file holds."""
    _hand_cache(tmp_path / "c.h5")
    _damage(tmp_path / "c.h5", lambda f: f.attrs.__setitem__("schema_version", 1))
    with CacheReader(tmp_path / "c.h5") as reader:
        data = reader.load(1, 1)
    assert data.text_raw is None and data.template_raw is None and data.train_augmented_norms is None


def test_a_subset_is_loaded_in_its_draw_order_with_its_views_norms(tmp_path: Path) -> None:
    """The train rows of `subsets/…/train` in the order stored (Dassl's draw order, not increasing), each with its own
    clean feature, views and the views' raw norms."""
    written = _hand_cache(tmp_path / "c.h5")
    rows = SUBSETS[1, 1][0]
    with CacheReader(tmp_path / "c.h5") as reader:
        data = reader.load(1, 1)
    assert data.train_labels.tolist() == [LABELS["train"][r] for r in rows]
    torch.testing.assert_close(data.train_features, _f16(written["features/train"][rows]))
    torch.testing.assert_close(data.train_augmented, _f16(written["augmented"][rows]))
    torch.testing.assert_close(data.train_augmented_norms, torch.from_numpy(written["augmented_norms"][rows]).float())


def test_two_subsets_of_one_reader_keep_their_own_val_sets(tmp_path: Path) -> None:
    """Only what every subset shares is loaded once per reader: each subset's val rows are its own."""
    written = _hand_cache(tmp_path / "c.h5")
    with CacheReader(tmp_path / "c.h5") as reader:
        first, second = reader.load(1, 1), reader.load(1, 2)
    torch.testing.assert_close(first.val_features, _f16(written["features/val"][SUBSETS[1, 1][1]]))
    torch.testing.assert_close(second.val_features, _f16(written["features/val"][SUBSETS[1, 2][1]]))


def test_the_ensemble_raw_text_is_the_mean_of_the_templates_raw_features(tmp_path: Path) -> None:
    """docs/data.md: `--text ensemble`'s `text_raw` is the mean over the stored templates of `unit × norm`."""
    written = _hand_cache(tmp_path / "c.h5")
    raw = _f16(written["text"]) * torch.from_numpy(written["text_norms"]).float().unsqueeze(-1)
    with CacheReader(tmp_path / "c.h5") as reader:
        coop, ensemble = reader.load(1, 1), reader.load(1, 1, text="ensemble")
    torch.testing.assert_close(coop.text_raw, raw[0])
    torch.testing.assert_close(ensemble.text_raw, raw.mean(dim=0))


def test_base_and_novel_halves_carry_their_classes_raw_text_and_wnids(tmp_path: Path) -> None:
    """docs/data.md's base-to-novel split (sorted, first ⌈C/2⌉ base): the novel half of 4 classes is classes 2 and 3,
    relabelled 0 and 1, with their wnids, raw text features and every template's raw features."""
    written = _hand_cache(tmp_path / "c.h5")
    raw = _f16(written["text"]) * torch.from_numpy(written["text_norms"]).float().unsqueeze(-1)
    with CacheReader(tmp_path / "c.h5") as reader:
        _, novel = reader.load(1, 1).base_novel()
    assert novel.class_names == ["cat", "dog"] and novel.wnids == ["n03", "n04"]
    torch.testing.assert_close(novel.text_raw, raw[0, 2:])
    torch.testing.assert_close(novel.template_raw, raw[:, 2:])


def test_one_class_has_no_novel_half(tmp_path: Path) -> None:
    from lathadapter.cache.store import FewShotData

    one = torch.zeros(1, DIM)
    data = FewShotData(["ant"], one, torch.zeros(0, DIM), one, torch.zeros(1, 1, DIM), torch.zeros(1, dtype=torch.long),
                       one, torch.zeros(1, dtype=torch.long), one, torch.zeros(1, dtype=torch.long), "f")
    with pytest.raises(CacheError, match="needs at least 2"):
        data.base_novel()


def test_the_shots_of_loaded_data_are_its_largest_class(tmp_path: Path) -> None:
    """`FewShotData.shots`: the largest number of train images of one class (a class may have fewer)."""
    from lathadapter.cache.store import FewShotData

    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    feats = torch.zeros(6, DIM)
    data = FewShotData(NAMES[:3], torch.zeros(3, DIM), torch.zeros(0, DIM), feats, torch.zeros(6, 1, DIM), labels,
                       feats, labels, feats, labels, "f")
    assert data.shots == 3


def test_the_search_set_and_lpp_val_set_leave_skipped_val_images_out(tmp_path: Path) -> None:
    """Images skipped by `--skip-bad` (listed in `skipped`, their rows all zero) leave the whole val split and LP++'s
    val set too."""
    _hand_cache(tmp_path / "c.h5", whole_val=True)

    def skip(f: h5py.File) -> None:  # as `--skip-bad` leaves val row 1: zeros, norm 0, listed
        f["splits/val/features"][1] = np.zeros(DIM, dtype=np.float16)
        f["splits/val/norms"][1] = 0
        f["skipped"].resize((1,))
        f["skipped"][0] = "val/1.png"

    _damage(tmp_path / "c.h5", skip)
    with CacheReader(tmp_path / "c.h5") as reader:
        data = reader.load(1, 1)
    kept = [0, 2, 3, 4, 5, 6, 7]
    assert data.search_labels.tolist() == [LABELS["val"][r] for r in kept]
    assert sorted(data.val_shots_labels.tolist()) == sorted(LABELS["val"][r] for r in VAL_SHOTS[1, 1] if r != 1)


def test_a_seed_is_below_2_to_the_32() -> None:
    """NumPy's seed range 0..2^32 − 1: 2^32 − 1 is a seed, 2^32 is not."""
    assert seed_error("--seeds", [0, 2**32 - 1]) is None
    assert "--seeds 4294967296" in seed_error("--seeds", [1, 2**32])


def test_write_cache_stores_the_attribute_raw_norms_given(tmp_path: Path) -> None:
    written = _hand_cache(tmp_path / "c.h5", attributes=3)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        np.testing.assert_allclose(f["attributes/norms"][()], written["attribute_norms"], rtol=1e-6)


def test_verify_passes_a_test_split_without_a_class_when_nothing_was_skipped(tmp_path: Path) -> None:
    """`--skip-bad`'s losses are classes whose every image was skipped: a class the test split never had (here class
    0) lost nothing."""
    from lathadapter.cache.inspection import verify

    _hand_cache(tmp_path / "c.h5")
    _damage(tmp_path / "c.h5", lambda f: f["splits/test/labels"].__setitem__(3, 3))
    assert verify(tmp_path / "c.h5") == []


# ------------------------------------------------------------------------------------------ cache verify and info


def test_verify_names_every_kind_of_bad_view_row_with_the_count_of_the_others(tmp_path: Path) -> None:
    """Each vector of a row must be unit norm (one bad view is enough); a skipped image's row must be all zero, views
    and raw norm included; a kept image's raw norm is positive; each kind names its first row and how many more there
    are."""
    from lathadapter.cache.inspection import verify

    _hand_cache(tmp_path / "c.h5")

    def change(f: h5py.File) -> None:
        for row, view in ((2, 1), (6, 0)):  # one view of each row of norm 2
            f["splits/train/augmented"][row, view] = np.eye(DIM, dtype=np.float16)[0] * 2
        f["splits/train/features"][4] = np.zeros(DIM, dtype=np.float16)  # train row 4 skipped, but not wholly zeroed
        f["splits/train/augmented"][4, 0] = np.zeros(DIM, dtype=np.float16)
        f["skipped"].resize((1,))
        f["skipped"][0] = "train/4.png"
        f["splits/val/norms"][1] = 0  # a kept image's raw norm of 0

    _damage(tmp_path / "c.h5", change)
    problems = verify(tmp_path / "c.h5")
    assert "splits/val/norms: row 1 holds a raw norm that is not a positive finite number" in problems
    assert "splits/train/augmented: row 2 is not unit norm (norm 2.0000) (and 1 more rows)" in problems
    assert "splits/train/augmented: row 4 is the row of an image skipped by --skip-bad but is not all zero" in problems
    assert "splits/train/norms: row 4 holds a raw norm that is not a positive finite number" in problems
    assert "splits/train/features: row 4 is all zero" not in " ".join(problems)


# ------------------------------------------------------------------------------------------ the results table


def _run_folder(runs: Path, key: str, metrics: dict | None = None, **config: object) -> Path:
    """A finished run's folder written by hand: the `config.json` and `metrics.json` fields the table reads."""
    folder = runs / key
    folder.mkdir(parents=True)
    saved = {"key": key, "cache": "c.h5", "cache_fields": {"dataset": "hand"}, "cache_fingerprint": "f" * 16,
             "method": "cross-modal", "shots": 1, "seed": 1, "classes": "all", "text": "coop", "select": "last",
             "options": {}, **config}
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "metrics.json").write_text(json.dumps(metrics or {"accuracy": {"all": 50.0}}))
    return folder


def test_a_run_saved_before_a_setting_existed_reads_as_it_trained(tmp_path: Path) -> None:
    """What a run saved before a setting or an option existed did, as `SAVED_BEFORE` and the option's `before` value
    state it: trained on the augmented views, one run a batch alone, and cross-modal's `init` zeroshot; a value the
    run saved wins over the `before` value."""
    from lathadapter.experiments.table import run_rows

    old = _run_folder(tmp_path, "old")
    new = _run_folder(tmp_path, "new", options={"init": "random"})
    first, second = run_rows([old, new])
    assert first["train_views"] == "augmented" and first["batch_runs"] == 1 and first["batch_mode"] == "alone"
    assert first["opt.init"] == "zeroshot" and second["opt.init"] == "random"


def test_a_tuning_candidate_saved_before_its_score_and_set_were_recorded(tmp_path: Path) -> None:
    """A candidate of stop 17 or earlier: scored by `val` (`tune.score`) on its `tune_val_accuracy`, and
    `tune.val_score` read from it."""
    from lathadapter.experiments.table import SAVED_BEFORE, run_rows

    tune = {"group": "g", "names": ["init"], "values": {"init": "random"}, "index": 0, "candidates": 1}
    [row] = run_rows([_run_folder(tmp_path, "k", {"accuracy": {"all": 50.0}, "tune": tune,
                                                  "tune_val_accuracy": 61.5})])
    assert row["tune.score"] == "val" and row["tune.val_score"] == 61.5 and row["tune.set"] == SAVED_BEFORE["tune.set"]


def test_a_transfer_run_gives_a_row_per_target_in_name_order_with_its_ece(tmp_path: Path) -> None:
    from lathadapter.experiments.table import run_rows

    metrics = {"accuracy": {"all": 50.0}, "targets": {"zeta": 40.0, "alpha": 30.0},
               "targets_ece": {"zeta": 4.0, "alpha": 3.0}}
    rows = run_rows([_run_folder(tmp_path, "k", metrics)])
    assert [(r["target"], r["acc_all"], r["ece_all"]) for r in rows] == [("alpha", 30.0, 3.0), ("zeta", 40.0, 4.0)]


def test_chosen_values_are_columns_in_name_order(tmp_path: Path) -> None:
    from lathadapter.experiments.table import as_table, run_rows

    columns, _ = as_table(run_rows([_run_folder(tmp_path, "k", {"accuracy": {"all": 1.0},
                                                                "chosen": {"zeta": 1, "alpha": 2}})]))
    assert [c for c in columns if c.startswith("chosen.")] == ["chosen.alpha", "chosen.zeta"]


def test_a_run_whose_metrics_changed_is_read_again_and_rows_are_copies(tmp_path: Path) -> None:
    """The table re-reads a run whose `metrics.json` changed (a run trained again); a caller changing a row it got
    changes nothing read later."""
    from lathadapter.experiments.table import run_rows

    folder = _run_folder(tmp_path, "k")
    [row] = run_rows([folder])
    row["acc_all"] = -1
    assert run_rows([folder])[0]["acc_all"] == 50.0
    (folder / "metrics.json").write_text(json.dumps({"accuracy": {"all": 75.25}, "steps": 12345}))
    assert run_rows([folder])[0]["acc_all"] == 75.25


def test_a_run_file_holding_json_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    from lathadapter.experiments.table import ResultsError, run_rows

    folder = _run_folder(tmp_path, "k")
    (folder / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="expected the JSON object of a run directory, not list"):
        run_rows([folder])


def test_the_table_lists_runs_by_key_and_a_failed_rewrite_keeps_the_last_table(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`results.csv` rows sorted by run key; a rewrite that fails midway leaves the previous table whole (written
    to a temporary file and moved into place) and no temporary file."""
    import csv

    from lathadapter.experiments import table

    for key in ("b", "c", "a"):
        _run_folder(tmp_path / "runs", key)
    path = table.write_results(tmp_path)
    before = path.read_text()
    assert [r["key"] for r in csv.DictReader(before.splitlines())] == ["a", "b", "c"]
    _run_folder(tmp_path / "runs", "d")

    class Failing:
        def __init__(self, f) -> None:  # noqa: ANN001
            self.f = f

        def writerow(self, row) -> None:  # noqa: ANN001
            self.f.write(",".join(row) + "\n")

        def writerows(self, rows) -> None:  # noqa: ANN001
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv, "writer", Failing)
    with pytest.raises(OSError):
        table.write_results(tmp_path)
    assert path.read_text() == before
    assert list(tmp_path.glob(".results.csv.*")) == []


def test_a_killed_rewrite_s_temporary_table_is_removed(tmp_path: Path) -> None:
    from lathadapter.experiments.table import write_results

    _run_folder(tmp_path / "runs", "a")
    (tmp_path / ".results.csv.123.abcd.tmp").write_text("half")
    write_results(tmp_path)
    assert list(tmp_path.glob(".results.csv.*")) == []


def test_verify_names_a_bad_fingerprint_an_unfinished_file_bad_labels_and_bad_subsets(tmp_path: Path) -> None:
    """docs/data.md's rules, each broken once: the fingerprint is the hash of `fingerprint_json`, `complete` is set,
    labels index the classes, a subset's rows do not repeat and draw at most `shots` of a class, the raw text norms
    are per template and class (the bad one named by its class), and a cache has templates."""
    from lathadapter.cache.inspection import verify

    _hand_cache(tmp_path / "c.h5")

    def change(f: h5py.File) -> None:
        f.attrs["fingerprint"] = "0" * 16
        f.attrs["complete"] = False
        f["splits/test/labels"][0] = len(NAMES)
        f["text/norms"][1, 3] = -1.0
        group = f["subsets/shots_1_seed_1"]
        del group["val"], group["train"]
        group["val"] = np.array([0, 1, 2, 0], dtype=np.int64)  # row 0 twice
        group["train"] = np.array([0, 1, 5, 3], dtype=np.int64)  # rows 0 and 1 are both class 0

    _damage(tmp_path / "c.h5", change)
    problems = verify(tmp_path / "c.h5")
    for expected in ("fingerprint does not match fingerprint_json",
                     "the cache is marked incomplete (its build did not finish)",
                     "splits/test/labels: values outside 0..3",
                     "text/norms: row 3 holds a raw norm that is not a positive finite number",
                     "subsets/shots_1_seed_1/val: repeated rows",
                     "subsets/shots_1_seed_1/train: a class has 2 images, above 1"):
        assert expected in problems

    def no_templates(f: h5py.File) -> None:
        for name, shape in (("templates", (0,)), ("features", (0, len(NAMES), DIM)), ("norms", (0, len(NAMES)))):
            dtype = f[f"text/{name}"].dtype
            del f[f"text/{name}"]
            f.create_dataset(f"text/{name}", shape=shape, dtype=dtype)

    _hand_cache(tmp_path / "d.h5")
    _damage(tmp_path / "d.h5", no_templates)
    assert verify(tmp_path / "d.h5") == ["text/templates is empty"]


def test_cache_info_rows_of_subsets_val_checkpoint_and_skipped_images(tmp_path: Path) -> None:
    """`cache info`: every shot count and seed the subsets have, the whole val split named as such, a checkpoint file
    by the first 16 hex of its SHA-256, and one skipped image in the singular."""
    from lathadapter.cache.inspection import summary

    sha = "0123456789abcdef" * 4
    _hand_cache(tmp_path / "c.h5", whole_val=True, fields={"pretrained": "file", "checkpoint_sha256": sha})

    def skip(f: h5py.File) -> None:
        f["splits/test/features"][1] = np.zeros(DIM, dtype=np.float16)
        f["skipped"].resize((1,))
        f["skipped"][0] = "test/1.png"

    _damage(tmp_path / "c.h5", skip)
    rows = dict(summary(tmp_path / "c.h5"))
    assert rows["subsets"] == "2: shots 1 × seeds 1,2"
    assert rows["val"].startswith("split: the whole val split")
    assert "checkpoint sha256 0123456789abcdef ·" in rows["model"]
    assert rows["skipped"] == "1 unreadable image"


# ------------------------------------------------------------------------------------------ compare's lines


def _part(*differences: float) -> object:
    """A part of a two-configuration comparison: a dataset a difference, A's accuracy 50 + it against B's 50."""
    from lathadapter.experiments.compare_grid import DatasetCell, PartComparison, SeedPair

    return PartComparison("all", 1, tuple(DatasetCell(f"d{i}", "", (SeedPair(1, 50 + d, 50.0),))
                                          for i, d in enumerate(differences)))


def test_the_summary_of_datasets_without_any_difference_has_no_test() -> None:
    from lathadapter.experiments.comparison import over_datasets

    assert over_datasets(_part(0.0, 0.0), 0.05).endswith(
        "every difference is 0.00: the signed-rank test has nothing to rank (p = 1)")


def test_the_summary_says_when_p_can_never_reach_alpha_including_equality() -> None:
    """With n nonzero differences the smallest p is 2 / 2ⁿ: 3 differences cannot reach α = 0.25 (p < α is needed)."""
    from lathadapter.experiments.comparison import over_datasets

    assert "the smallest possible p is 0.25: it can never reach 0.25" in over_datasets(_part(1.0, 2.0, 3.0), 0.25)
    assert "never reach" not in over_datasets(_part(1.0, 2.0, 3.0), 0.3)


def test_a_p_value_below_double_precision_s_range_is_printed_as_a_bound() -> None:
    from lathadapter.experiments.comparison import p_value

    assert p_value(1e-301) == "< 1e-300" and p_value(0.0123456) == "= 0.0123"


def test_the_sweep_removes_unfinished_runs_and_unheld_locks_only(tmp_path: Path) -> None:
    """What a killed process left: an unfinished run's folder goes; a finished run's folder stays, its lock goes."""
    from lathadapter.experiments.table import sweep_stale

    runs = tmp_path / "runs"
    _run_folder(runs, "done")
    (runs / "done.lock").write_text("")
    (runs / "half").mkdir()
    sweep_stale(tmp_path)
    assert sorted(p.name for p in runs.iterdir()) == ["done"]
    assert (runs / "done" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------ a grid's data


def test_a_grid_s_data_is_its_cache_s_and_its_text_choice_s(tmp_path: Path) -> None:
    """`DataCache`: one set per cache, subset and `--text` (coop: template 0; ensemble: the normalised mean)."""
    from lathadapter.experiments.data import DataCache

    first = _hand_cache(tmp_path / "a.h5")
    (tmp_path / "b.h5").write_bytes((tmp_path / "a.h5").read_bytes())
    _damage(tmp_path / "b.h5", lambda f: f["text/features"].__setitem__(0, f["text/features"][1]))
    text = _f16(first["text"])
    cache = DataCache("cpu")
    coop, ensemble = cache.load(str(tmp_path / "a.h5"), 1, 1, "coop"), cache.load(str(tmp_path / "a.h5"), 1, 1,
                                                                                    "ensemble")
    other = cache.load(str(tmp_path / "b.h5"), 1, 1, "coop")
    cache.close()
    mean = text.mean(dim=0)
    torch.testing.assert_close(coop.text_features, text[0] / text[0].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(ensemble.text_features, mean / mean.norm(dim=-1, keepdim=True), atol=1e-3, rtol=0)
    torch.testing.assert_close(other.text_features, text[1] / text[1].norm(dim=-1, keepdim=True))
