"""The bundled tiny CLIP: where its open_clip config and weights live, and the prompt template of the demo dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lathadapter.demo.dataset import TEMPLATE

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_NAME = "lathadapter-tiny-shapes"


@dataclass(frozen=True)
class BundledModel:
    """Paths to pass as `--model <config> --pretrained <checkpoint>`; `name` is the open_clip model name."""

    config: Path
    checkpoint: Path
    name: str
    template: str


def bundled_model() -> BundledModel:
    """The tiny CLIP pre-trained on the synthetic corpus (see demo/assets/MODEL_CARD.md)."""
    model = BundledModel(ASSETS / f"{MODEL_NAME}.json", ASSETS / f"{MODEL_NAME}.pt", MODEL_NAME, TEMPLATE)
    missing = [str(path) for path in (model.config, model.checkpoint) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"bundled model files missing: {', '.join(missing)}; reinstall lathadapter or run "
            "`python -m lathadapter.demo.pretrain` to rebuild them"
        )
    return model
