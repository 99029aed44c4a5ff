"""Every method, one module each; importing this package registers them (in this order)."""

from lathadapter.adapter.methods import (  # noqa: F401
    clip_adapter,
    lathadapter,
    linear_probe,
    taskres,
    tip_adapter,
    zeroshot,
)
