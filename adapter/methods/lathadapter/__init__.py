"""LatHAdapter (docs/method.md): its options (`options`), the method and its plain reference over explicit points
(`method`), and the fused autograd nodes it trains with: the category side (`text`) and the loss after the image
product (`loss`); `diagnostics` measures whether a trained model holds its hierarchy. Importing the package registers
the method."""

from lathadapter.adapter.methods.lathadapter.method import LatHAdapter
from lathadapter.adapter.methods.lathadapter.options import CURVATURE_RANGE, LatHAdapterOptions

__all__ = ["CURVATURE_RANGE", "LatHAdapter", "LatHAdapterOptions"]
