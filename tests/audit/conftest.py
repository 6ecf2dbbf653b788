"""The uplink's fixtures (a box enrolled with a reference hub) serve the audit tests too."""

from tests.uplink.conftest import enrolled_box

__all__ = ["enrolled_box"]
