"""Model families; importing a family's module registers its models."""

from . import (
    gknet,  # noqa: F401  (registers gknet, gknet_small, test_gknet)
    reference,  # noqa: F401  (registers composite, reinhard: weightless references)
)
from .gknet import GKNet
from .hdnet import HDNet  # registers hdnet, hdnet_small, test_hdnet

__all__ = ["GKNet", "HDNet"]
