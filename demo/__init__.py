"""The bundled demo: a synthetic dataset with a real class hierarchy and a tiny CLIP pre-trained on its corpus."""

from lathadapter.demo.dataset import write_demo_dataset
from lathadapter.demo.model import BundledModel, bundled_model

__all__ = ["BundledModel", "bundled_model", "write_demo_dataset"]
