"""The front panel: LEDs and a button (gpiozero), the setup window, the factory reset."""

from afra.panel.layout import Layout, load_layout
from afra.panel.panel import Panel, locate_handler, pin_factory_for
from afra.panel.setup_window import SetupWindow

__all__ = ["Layout", "Panel", "SetupWindow", "load_layout", "locate_handler", "pin_factory_for"]
