"""Poincaré-ball geometry: PyTorch references (CPU path, test oracle), fused Triton kernels (CUDA path), and the
radial form for lifted unit vectors (`radial`), which LatHAdapter trains with."""

from lathadapter.kernels.cone import cone_energy, cone_exterior_angle, cone_half_aperture
from lathadapter.kernels.dispatch import (
    backend,
    edge_energy,
    get_backend,
    pairwise_distance,
    separation_loss,
    set_backend,
)
from lathadapter.kernels.geometry import distance, expmap0, logmap0, mobius_add, origin_distance, project
from lathadapter.kernels.hierarchy import centripetal_energy
from lathadapter.kernels.radial import (
    radial_centripetal_energy,
    radial_cone_energy,
    radial_distance,
    radial_exterior_angle,
    radial_half_aperture,
    radial_origin_distance,
    scaled_radius,
)

__all__ = [
    "backend",
    "centripetal_energy",
    "cone_energy",
    "cone_exterior_angle",
    "cone_half_aperture",
    "distance",
    "edge_energy",
    "expmap0",
    "get_backend",
    "logmap0",
    "mobius_add",
    "origin_distance",
    "pairwise_distance",
    "project",
    "radial_centripetal_energy",
    "radial_cone_energy",
    "radial_distance",
    "radial_exterior_angle",
    "radial_half_aperture",
    "radial_origin_distance",
    "scaled_radius",
    "separation_loss",
    "set_backend",
]
