"""The rtlib Jupyter server extension: the REST API under /rtlib/api/, wired to one JobManager."""

from __future__ import annotations

import logging

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Int, Unicode

from .handlers import routes

log = logging.getLogger("rtlib.jupyter")


class RtlibExtensionApp(ExtensionApp):
    """Serves /rtlib/api/ (see docs/jupyter.md and GET /rtlib/api/openapi.json).

    The config comes from the usual rtlib loader: ``config_file`` (else
    $RTLIB_CONFIG, else ./rtlib.toml, else the embedded default in
    ``workspace``); $RTLIB_STORE_URL names another job store.
    """

    name = "rtlib"
    load_other_extensions = True

    config_file = Unicode("", config=True, help="rtlib site config TOML (default: $RTLIB_CONFIG, ./rtlib.toml, else the embedded default)")
    workspace = Unicode("", config=True, help="rtlib workspace directory (default: $RTLIB_WORKSPACE or ~/.local/share/rtlib)")
    allow_origin = Unicode(
        "", config=True,
        help="origin allowed to call /rtlib/api/ from another site (CORS); empty (the default): none, no CORS header is sent",
    )
    max_body_bytes = Int(1 << 20, config=True, help="request bodies larger than this are refused with 413")
    sse_keepalive_s = Float(15.0, config=True, help="seconds between keep-alive comments on an idle event stream")
    sse_max_s = Float(300.0, config=True, help="an event stream is closed after this long; EventSource reconnects with Last-Event-ID")
    sse_poll_s = Float(0.25, config=True, help="how often an event stream looks for new events in the job store")

    manager = None

    def initialize_settings(self) -> None:
        from rtlib.manager import JobManager

        self.manager = JobManager.from_config(self.config_file or None, self.workspace or None)
        log.info("rtlib: job store %r, workspace %s", self.manager.store, self.manager.settings.workspace)
        self.settings.update(
            rtlib_manager=self.manager,
            rtlib_options={
                "allow_origin": self.allow_origin,
                "max_body_bytes": self.max_body_bytes,
                "sse_keepalive_s": self.sse_keepalive_s,
                "sse_max_s": self.sse_max_s,
                "sse_poll_s": self.sse_poll_s,
            },
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())

    async def stop_extension(self) -> None:
        if self.manager is not None:
            self.manager.close()
            self.manager = None
