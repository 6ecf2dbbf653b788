"""`HubServer`: the reference hub served over HTTPS by cheroot, with optional client certs.

TLS uses the hub CA's server certificate; the same CA is the only trust anchor for client
certificates, requested but optional (`CERT_OPTIONAL`), so `/medix/v1/enrol` works without
one while every other node request arrives with a certificate the TLS layer has verified
(cheroot hands its PEM to the app as `SSL_CLIENT_CERT`). A certificate from any other CA
fails the handshake.

It runs on medix.serving's `ThreadedServer`, like the box's own web services.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter

from medix.clock import Clock
from medix.hub import schemas
from medix.hub.app import create_hub, hub_of
from medix.hub.core import HubConfig
from medix.models import Policy
from medix.serving import ThreadedServer

log = logging.getLogger(__name__)

SERVER_THREADS = 16  # long polls hold a thread each; leave room for uploads beside them
SHUTDOWN_TIMEOUT_S = 5
CONNECTION_TIMEOUT_S = 90  # above the longest long poll (60 s)


class HubServer:
    """A reference hub served on `host:port` (0 picks a free port); a context manager.

    `stop()` stops serving and closes the hub's database; `start()` again serves the same
    data directory on the same port (the CA, nodes, studies and admin token are reused), as
    a hub coming back after an outage would.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_token: str | None = None,
        hub_name: str = "Reference hub",
        tls: bool = True,
        clock: Clock | None = None,
        server_names: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.tls = tls
        self._config = HubConfig(
            data_dir=self.data_dir,
            admin_token=admin_token,
            hub_name=hub_name,
            server_names=(host, *server_names),  # names nodes reach it by (TLS SANs)
        )
        self._clock = clock
        self._port = port
        self._runner: ThreadedServer | None = None
        self._open_hub()

    def _open_hub(self) -> None:
        self.app = create_hub(self._config, clock=self._clock)
        self.hub = hub_of(self.app)
        self._hub_open = True

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._runner is not None:
            return self
        if not self._hub_open:
            self._open_hub()
        runner = ThreadedServer(
            self.app,
            bind=self.host,
            port=self._port,  # after a stop: the port it had, so it comes back at the same URL
            name="medix-hub",
            threads=SERVER_THREADS,
            timeout=CONNECTION_TIMEOUT_S,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            ssl_adapter=self._ssl_adapter() if self.tls else None,
        )
        runner.start()
        self._port = runner.port
        self._runner = runner
        self.hub.public_url = self.url
        log.info("reference hub at %s", self.url)
        return self

    def _ssl_adapter(self) -> BuiltinSSLAdapter:
        ca = self.hub.ca
        adapter = BuiltinSSLAdapter(
            str(ca.server_cert_path),
            str(ca.server_key_path),
            certificate_chain=str(ca.ca_cert_path),
        )
        context: ssl.SSLContext = adapter.context
        # The adapter's context (purpose CLIENT_AUTH, cafile = the chain) already trusts the
        # hub CA for client certificates and nothing else; ask for one, do not demand it.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return adapter

    def stop(self) -> None:
        """Stop serving (long polls are released at once) and close the database."""
        if self._runner is not None:
            self.hub.begin_shutdown()
            self._runner.stop()
            self._runner = None
        if self._hub_open:
            self.hub.close()
            self._hub_open = False

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where it is -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self._port}"

    @property
    def ca_pem_path(self) -> Path:
        return self.hub.ca.ca_cert_path

    @property
    def admin_token(self) -> str:
        return self.hub.admin_token

    def webhook_url(self, vendor: str = "afra") -> str:
        """The absolute URL nodes post download progress to (WebhookUri)."""
        return f"{self.url}/webhook/v1/pacs/{vendor}"

    def webhook_redirect_url(self) -> str:
        """A webhook URL answering 302 to the cloud metadata address (must not be followed)."""
        return f"{self.url}/webhook/v1/redirect"

    # -- what tests and demos do without HTTP ------------------------------------------------

    def new_pairing_code(self) -> str:
        return self.hub.new_pairing_code().code

    def add_physician(self, login: str, name: str, password: str) -> None:
        """A physician account, as `POST /admin/physicians` makes it; `name` is the PN text
        nodes send as referring_physician."""
        self.hub.physicians.add(schemas.PhysicianOrder(login=login, name=name, password=password))

    def publish_policy(self, policy: Policy) -> None:
        self.hub.publish_policy(policy)

    def queue_command(self, node_id: str, type: str, args: dict[str, Any]) -> str:
        return self.hub.queue_command(node_id, type, args)

    def studies(self) -> list[dict[str, Any]]:
        return [study.model_dump(mode="json") for study in self.hub.studies().studies]

    def nodes(self) -> list[dict[str, Any]]:
        return [node.model_dump(mode="json") for node in self.hub.nodes().nodes]

    def webhooks(self) -> list[dict[str, Any]]:
        """The webhook log, oldest first: vendor, headers, body, node_id, verified, outcome
        ("recorded" or "failed" by fail-next) and the status answered."""
        return [entry.model_dump(mode="json") for entry in self.hub.webhooks().webhooks]

    def fail_webhooks(self, count: int, status: int = 503) -> None:
        """Answer the next `count` webhook posts with `status` (logged as failed attempts)."""
        self.hub.fail_webhooks(count, status)

    def node_api_token(self, node_id: str) -> str:
        """The bearer token the hub presents to the node's HTTP API (issued at enrolment)."""
        return self.hub.node_api_token(node_id)

    def files(self) -> list[dict[str, Any]]:
        """Saved files, oldest first: file_id, node_id, job_id, name, size, sha256, url and
        path (where the hub holds it)."""
        return [
            info.model_dump(mode="json") for info in self.hub.files().files if info.state == "saved"
        ]

    def audit(self, node_id: str | None = None) -> list[dict[str, Any]]:
        """The audit records nodes have handed over, as JSON."""
        return [r.event.model_dump(mode="json") for r in self.hub.audit_records(node_id).records]

    def instance_bytes(self, upload_id: str, sop_instance_uid: str) -> bytes:
        return self.hub.instance_bytes(upload_id, sop_instance_uid)
