"""Poincaré-ball geometry: plain PyTorch functions (the references LatHAdapter's definition uses), the radial form for
lifted unit vectors (`radial`) that its fused twins train with, the Triton kernels of its loss stage on CUDA
(`triton_radial_loss`), and the backend switch (`dispatch`)."""

from lathadapter.kernels.cone import cone_energy, cone_exterior_angle, cone_half_aperture
from lathadapter.kernels.dispatch import backend, get_backend, set_backend
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
    "expmap0",
    "get_backend",
    "logmap0",
    "mobius_add",
    "origin_distance",
    "project",
    "radial_centripetal_energy",
    "radial_cone_energy",
    "radial_distance",
    "radial_exterior_angle",
    "radial_half_aperture",
    "radial_origin_distance",
    "scaled_radius",
    "set_backend",
]
