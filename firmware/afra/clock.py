"""The clock seam, as the firmware names it: `medix.clock` is the one definition, shared with
the reference hub (which reads only `time()`)."""

from medix.clock import Clock, SystemClock

__all__ = ["Clock", "SystemClock"]
