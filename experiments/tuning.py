"""Fair tuning's records and choice: presets, a candidate's place in its tuning group (`Tuning`), and which candidate
each group keeps (`select_tuned`), from val scores only.

Every value (or combination) of the tuned options is an ordinary run, a *candidate*; the candidates of one (cache,
method, shots, seed, classes, text, select, other options) cell form a *tuning group*. Each candidate records its
group, its val accuracy (`tune_val_accuracy`: on `--tune-set`, base classes only for base-to-novel) and the group's
score (`tune_score`: that accuracy, or `val_hm`, the HM of a pseudo-base copy's val accuracy on two halves of the
training classes, `run.pseudo_novel_accuracies`) in `metrics.json`; the results table marks, once every candidate of a
group is finished, the one with the best score (ties: the first in the order given) `tune.selected`. A preset's group
whose best value is on an edge of its grid grows by a step past it (`PRESET_EXTENSIONS`, `pending_extensions`; the
driver trains them, `launch.with_extensions`) and chooses again; a choice still on an edge is marked `tune.edge`, as is
the highest (lowest) value of an explicit grid of at least `EXPLICIT_EDGE_VALUES` numbers over one option (never
extended). The test set never enters the choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from lathadapter.adapter.catalog import make_options
from lathadapter.adapter.options import OptionError, changed_fields, unkeyed
from lathadapter.cache.store import FewShotData
from lathadapter.experiments.run import TUNE_SCORES, RunConfig, option_in_effect, scores_new_classes

# `--tune-preset NAME`: the option tuned and the factors applied to each method's own default of it, in tie-break
# order (the default first: a tie on the val set keeps the method's own value).
TUNE_PRESETS: dict[str, tuple[str, tuple[float, ...]]] = {"lr": ("lr", (1.0, 0.1, 10.0))}
# A preset's extension (`Extension`): while a group chooses the top (bottom) value of its grid, one more candidate at
# that value × step (÷ step) is trained, at most `limit` per side.
PRESET_EXTENSIONS: dict[str, tuple[float, int]] = {"lr": (10.0, 2)}
# An explicit `--tune` grid over one numeric option is never extended, but a choice of its highest (lowest) value is
# marked as a preset's is (`tune.edge`), when the grid has at least this many values: with two, every choice is an
# edge, and a mark that every cell carries says nothing.
EXPLICIT_EDGE_VALUES = 3
# `--tune-score`: what tuning chooses by (`run.TUNE_SCORES`); auto: val_hm for base-to-novel cells, val otherwise.
TUNE_SCORE_CHOICES = ("auto", *TUNE_SCORES)


@dataclass(frozen=True)
class Scaled:
    """A preset's candidate value: the method's own default of the option × `factor`. Used where that default is left
    to the method's training recipe (`None`; official recipes vary by dataset), so it is read when the run starts,
    from the method built on the run's data (`run.option_in_effect`); a numeric default is scaled at expansion."""

    factor: float

    def __str__(self) -> str:
        return f"default×{self.factor:g}"


@dataclass(frozen=True)
class Extension:
    """How a preset's grid grows past an edge (`PRESET_EXTENSIONS`): its option, the method's numeric default of it
    (None: left to the training recipe, so the values are `Scaled`), the factor of one step, the most steps per side."""

    name: str
    default: float | None
    step: float
    limit: int

    def value(self, factor: float) -> Any:
        """The option's value at `factor` × its default, as the preset's own candidates have it."""
        return Scaled(factor) if self.default is None else preset_value(self.default, factor)


@dataclass(frozen=True)
class Tuning:
    """A candidate's place in its tuning group: the tuned option names, every original candidate's (typed, or
    `Scaled`) values in the order given (the tie-break order), this run's index among them, and the score the group
    chooses by. Of a preset's group (`extension`): the candidate's factor of the preset's option and, for a candidate
    added past an edge (index ≥ the originals'), its own values (`extra`) and the key of the original candidate it
    extends (`origin`)."""

    names: tuple[str, ...]
    candidates: tuple[tuple[Any, ...], ...]
    index: int
    score: str = "val"
    extension: Extension | None = None
    factor: float | None = None
    extra: tuple[Any, ...] | None = None
    origin: str | None = None
    tune_set: str = "subset"  # the val images the score reads (`run.TUNE_SETS`); metrics.json's `set`

    @property
    def values(self) -> dict[str, Any]:
        own = self.candidates[self.index] if self.extra is None else self.extra
        return dict(zip(self.names, own, strict=True))

    @property
    def scaled(self) -> dict[str, float]:
        """The options this candidate sets to their default × a factor, resolved when the run starts."""
        return {name: v.factor for name, v in self.values.items() if isinstance(v, Scaled)}

    def _digest(self, payload: Any) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def salt(self) -> str:
        """Joins the cache fingerprint in a candidate's key: a candidate is never a plain run of the same options, nor
        a candidate of another budget, so every finished run directory belongs to exactly one group; its own values
        are in it too (two `Scaled` candidates have the same options until they are resolved). An extension
        candidate's salt has its own values instead of an index (the same key whichever round adds it); a score other
        than `val` joins it (so the keys of `val` groups are those of grids before scores existed), and a `tune_set`
        other than `subset` (its value, `split`, as every earlier grid hashed it)."""
        payload: list[Any] = ([self.names, self.candidates, self.index] if self.extra is None
                              else [self.names, self.candidates, "extension", self.extra])
        if self.score != "val":
            payload.append(self.score)
        if self.tune_set != "subset":
            payload.append(self.tune_set)
        return "|tune:" + self._digest(payload)

    def group(self, config: RunConfig, fingerprint: str) -> str:
        """The group id: the configuration without the tuned options, the (salted) fingerprint and the budget."""
        identity = config.identity()  # options at their `before` value left out, as in run keys (`options.unkeyed`)
        left_out = set(self.names) | unkeyed(config.options)
        identity["options"] = {k: v for k, v in identity["options"].items() if k not in left_out}
        payload = {**identity, "fingerprint": fingerprint, "tune": [self.names, self.candidates]}
        if self.score != "val":
            payload["score"] = self.score
        if self.tune_set != "subset":
            payload["val_set"] = self.tune_set  # the hashed key of earlier grids, kept: their group ids stay
        return self._digest(payload)

    def record(self, group: str, config: RunConfig) -> dict[str, Any]:
        """What `metrics.json` keeps under `tune` (the results table is rebuilt from it); `config` is the one trained,
        whose tuned values are resolved."""
        record = {"group": group, "names": list(self.names),
                  "values": {name: getattr(config.options, name) for name in self.names},
                  "index": self.index, "candidates": len(self.candidates)}
        if self.scaled:
            record["scaled"] = self.scaled  # the factors of the default the values were resolved from
        record["score"] = self.score
        record["set"] = self.tune_set  # results.csv's `tune.set` (written as `val_set`, `fewshot`, before stop 27)
        if self.extension is not None:
            record["extension"] = {"factor": self.factor, "step": self.extension.step, "limit": self.extension.limit,
                                   "origin": self.origin}
        return record


def preset_value(default: float, factor: float) -> float:
    """`default × factor` without binary noise (1e-4 × 3 is 0.0003, not 0.00030000000000000003)."""
    return float(f"{default * factor:.12g}")


def resolve_score(requested: str, classes: str, method: str) -> str:
    """The score a tuning group of `method` chooses by: `requested` (`TUNE_SCORE_CHOICES`; auto: `val_hm` for
    base-to-novel cells, `val` otherwise), except that a method that cannot score unseen classes (its novel accuracy
    is not applicable, so `val_hm` is undefined) chooses by `val`, and its records say so."""
    if requested not in TUNE_SCORE_CHOICES:
        raise OptionError(f"--tune-score {requested}: choose one of {', '.join(TUNE_SCORE_CHOICES)}")
    score = ("val_hm" if classes == "base" else "val") if requested == "auto" else requested
    return score if score == "val" or scores_new_classes(method) else "val"


def resolve_scaled(config: RunConfig, data: FewShotData, scaled: dict[str, float]) -> RunConfig:
    """`config` with each option of `scaled` set to the value it takes in this run (its recipe's) × its factor."""
    values = {name: preset_value(option_in_effect(config, data, name), f) for name, f in scaled.items()}
    options = make_options(config.method, {**changed_fields(config.options), **values})
    return dataclasses.replace(config, options=options)


@dataclass(frozen=True)
class Plan:
    """A tuning group's state: the key of its kept candidate (None while one is missing), whether that choice is still
    on an edge of a preset's grid after its extensions or on an edge of an explicit grid (`explicit_edge`) (`low`,
    `high`, or empty), and the extension candidate due
    (the key of the original candidate it extends, its factor, its index), if any; `joined`: the extension
    candidates finished and considered, likewise."""

    selected: str | None
    edge: str = ""
    pending: tuple[str, float, int] | None = None
    joined: tuple[tuple[str, float, int], ...] = ()


def explicit_edge(values: list[float | None], chosen: float | None) -> str:
    """Where `chosen` lies in an explicit grid of one option's `values` (its candidates'): `high` (`low`) when it is
    their largest (smallest) and the grid has at least `EXPLICIT_EDGE_VALUES` distinct numbers, else empty (a value
    that is no number, such as `radius=head`, has no edge)."""
    if chosen is None or any(v is None for v in values) or len(set(values)) < EXPLICIT_EDGE_VALUES:
        return ""
    return "high" if chosen == max(values) else "low" if chosen == min(values) else ""


def _plan(candidates: dict[str, dict[str, Any]], originals: int) -> Plan:
    """Choose among a group's candidates (key → index, score, factor, step, limit, origin, value): the best score
    (ties: the lowest index) among the originals; then, in a preset's group, while the best is the highest (lowest)
    factor of those considered and fewer than `limit` steps were added on that side, the candidate one step beyond it
    (same other values, factor × step or ÷ step) joins, or is due when it has not run. An explicit grid is not
    extended; its choice is marked by `explicit_edge` over its candidates' `value`s (None: not one numeric option)."""
    pool = {key: c for key, c in candidates.items() if c["index"] < originals}
    if len({c["index"] for c in pool.values()}) < originals:
        return Plan(None)
    added = {"high": 0, "low": 0}
    joined: list[tuple[str, float, int]] = []
    while True:
        best = min(pool, key=lambda key: (-(pool[key]["score"] if pool[key]["score"] is not None else -math.inf),
                                          pool[key]["index"]))
        chosen = pool[best]
        if chosen["step"] is None:
            return Plan(best, explicit_edge([c["value"] for c in pool.values()], chosen["value"]))
        done = tuple(joined)
        factors = [c["factor"] for c in pool.values()]
        side = ("" if max(factors) == min(factors) else "high" if chosen["factor"] == max(factors)
                else "low" if chosen["factor"] == min(factors) else "")
        if not side:
            return Plan(best, joined=done)
        if added[side] >= chosen["limit"]:
            return Plan(best, side, joined=done)
        step = chosen["step"] if side == "high" else 1 / chosen["step"]
        factor = preset_value(chosen["factor"], step)
        origin = chosen["origin"] or best
        beyond = [key for key, c in candidates.items() if c["origin"] == origin and c["factor"] == factor]
        if not beyond:
            return Plan(None, "", (origin, factor, originals + added[side]), done)
        pool[beyond[0]] = candidates[beyond[0]]
        joined.append((origin, factor, originals + added[side]))
        added[side] += 1


def _single_value(row: dict[str, Any]) -> float | None:
    """The candidate's value of its group's one tuned option as a finite number (`tune.values`: `NAME=VALUE`), or None
    when the group tunes several options or the value is no number."""
    names = str(row.get("tune.names") or "").split()
    if len(names) != 1:
        return None
    name, _, text = str(row.get("tune.values") or "").partition("=")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if name == names[0] and math.isfinite(value) else None


def tuning_plans(rows: list[dict[str, Any]]) -> dict[str, Plan]:
    """Each tuning group's `Plan`, from the results rows of its finished candidates (only their val scores, never
    test accuracy)."""
    groups: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    originals: dict[str, int] = {}
    number = lambda value: None if value in (None, "") else float(value)  # noqa: E731 — typed rows or the CSV's text
    for row in rows:
        if row.get("tune.group"):
            score = row.get("tune.val_score", row.get("tune.val_accuracy"))
            groups[row["tune.group"]][row["key"]] = {
                "index": int(row["tune.index"]), "score": number(score), "factor": number(row.get("tune.factor")),
                "step": number(row.get("tune.step")), "limit": int(number(row.get("tune.limit")) or 0),
                "origin": row.get("tune.origin") or None, "value": _single_value(row)}
            originals[row["tune.group"]] = max(originals.get(row["tune.group"], 0), int(row["tune.candidates"]))
    return {group: _plan(candidates, originals[group]) for group, candidates in groups.items()}


def select_tuned(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each tuning candidate's rows `tune.selected`: True for the candidate its group keeps (`tuning_plans`: the
    best val score, ties the lowest index, i.e. the first value given; a preset's group extended past its edges),
    False for the others, and `tune.edge` on the kept row (a preset's choice still on an edge after its extensions, or
    an explicit grid's highest or lowest value, `explicit_edge`). A group with candidates still unfinished or an
    extension due selects none yet (its cells read as no run). Only val scores are read, never test accuracy."""
    plans = tuning_plans(rows)
    for row in rows:
        if row.get("tune.group"):
            plan = plans[row["tune.group"]]
            row["tune.selected"] = row["key"] == plan.selected
            row["tune.edge"] = plan.edge if row["tune.selected"] else ""
    return rows


def pending_extensions(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, float, int], bool]]:
    """The extension candidates of the groups' plans, each (key of the original candidate extended, factor, index)
    with whether it is due (else finished and considered: `Plan.joined`)."""
    plans = tuning_plans(rows).values()
    return [(joined, False) for plan in plans for joined in plan.joined] + [
        (plan.pending, True) for plan in plans if plan.pending is not None]

