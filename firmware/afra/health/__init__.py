"""The appliance's health: one state machine written as data, and the checks that feed it.

Parts of the box raise and clear *conditions* ("hub_unreachable", "disk_floor", ...). Each
condition names the *state* it puts the box in; the box's state is the highest-ranked state
among the active conditions ("healthy" when none is active), and every active condition stays
listed as a reason. Nothing else decides the state: the LEDs, `afra status`, the dashboard and
the hub heartbeat all read it from here.

    health.set("hub_unreachable", True, "connection refused")
    health.state     -> "degraded"
    health.reasons   -> [Reason(condition="hub_unreachable", state="degraded", ...)]

A condition can be held by several sources at once (the wizard and the enrolment check both
speak for "unclaimed"); it is active while any source holds it. A condition can also be set
for a limited time (`for_seconds`): the setup window and locate end by themselves.

    model.py     the model as data: STATES (with their ranks), CONDITIONS, Reason
    state.py     Health: conditions in (per source, timed or not), one state and reasons out
    checks.py    the probes (storage, uplink and queue age, PACS C-ECHO, enrolment and
                 certificate, the files start-up left for review), the certificate rule,
                 the list a box runs
    monitor.py   HealthMonitor: runs the probes on its own thread, keeps the status file
    status.py    the status file (`<data_dir>/status.json`) as `afra status` reads it

Everything the rest of the box uses is importable from `afra.health` itself.
"""

from afra.health.checks import (
    DAY_S,
    CertificateExpiry,
    DiskUsage,
    IdentityProbe,
    IdentityView,
    PacsProbe,
    Probe,
    QueueView,
    StartupFiles,
    StartupFilesProbe,
    StorageProbe,
    UplinkProbe,
    UplinkView,
    appliance_probes,
    certificate_expiry,
    disk_usage,
)
from afra.health.model import (
    CONDITIONS,
    HEALTHY,
    STATES,
    Condition,
    Reason,
    State,
    UnknownCondition,
)
from afra.health.monitor import HealthMonitor, StatusPart
from afra.health.state import Health, Listener
from afra.health.status import STATUS_FILE, STATUS_REFRESH_S, box_running, read_status

__all__ = [
    "CONDITIONS",
    "DAY_S",
    "HEALTHY",
    "STATES",
    "STATUS_FILE",
    "STATUS_REFRESH_S",
    "CertificateExpiry",
    "Condition",
    "DiskUsage",
    "Health",
    "HealthMonitor",
    "IdentityProbe",
    "IdentityView",
    "Listener",
    "PacsProbe",
    "Probe",
    "QueueView",
    "Reason",
    "StartupFiles",
    "StartupFilesProbe",
    "State",
    "StatusPart",
    "StorageProbe",
    "UnknownCondition",
    "UplinkProbe",
    "UplinkView",
    "appliance_probes",
    "box_running",
    "certificate_expiry",
    "disk_usage",
    "read_status",
]
