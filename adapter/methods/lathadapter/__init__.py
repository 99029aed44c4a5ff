"""LatHAdapter (docs/method.md): its options (`options`), the method (`method`), the loss's definition by plain
autograd over explicit points (`reference`), and the forms it trains with: the category side as one autograd node
(`text`), the loss after the image product over the radial nodes and the Triton twin's entry (`fused`), and the
fixed-shape loss of stacked runs and captured steps (`stacked`); `diagnostics` measures whether a trained model holds
its hierarchy. Importing the package registers the method."""

from lathadapter.adapter.methods.lathadapter.method import LatHAdapter
from lathadapter.adapter.methods.lathadapter.options import CURVATURE_RANGE, LatHAdapterOptions

__all__ = ["CURVATURE_RANGE", "LatHAdapter", "LatHAdapterOptions"]
