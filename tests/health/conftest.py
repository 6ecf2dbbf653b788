"""The uplink's fixtures (a reference hub, a box enrolled with it) serve the health tests too."""

from tests.uplink.conftest import enrolled_box, hub

__all__ = ["enrolled_box", "hub"]
