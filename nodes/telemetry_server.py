"""Telemetry inside a ComfyUI server: the recorder and run store, their HTTP routes, live events.

:func:`setup` runs once when ComfyUI loads the package; everything it builds lives on one
:class:`TelemetryService`. The hooks into the executor are in :mod:`.telemetry_hooks`.
"""
from __future__ import annotations

import json
import logging

from ..telemetry.recorder import Recorder
from ..telemetry.store import RunStore, handle_get, handle_list
from . import telemetry_hooks

log = logging.getLogger("wan_accel.telemetry")
EVENT_PREFIX = "wan_accel.telemetry."
ROUTE = "/wan_accel/telemetry"
MAX_PENDING_CLIENTS = 100


class LiveEvents:
    """Sends the recorder's events to the client that queued the prompt (``send_sync``)."""

    def __init__(self):
        self.client_id: str | None = None  # of the prompt running now
        self.run_clients: dict[str, str] = {}  # prompt id -> client id, until its run record is sent

    def prompt_started(self, prompt_id: str, client_id: str | None) -> None:
        self.client_id = client_id
        if client_id is not None:
            if len(self.run_clients) > MAX_PENDING_CLIENTS:  # runs whose record never came back: forget them
                self.run_clients.clear()
            self.run_clients[prompt_id] = client_id

    def send(self, name: str, payload: dict) -> None:
        from server import PromptServer

        server = PromptServer.instance
        if name == "run":  # built on a background thread: the next prompt may have started already
            sid = self.run_clients.pop(payload.get("prompt_id"), None)
        else:
            sid = self.client_id
        if sid is None:
            # API run without a client id: tell every open editor that a run was saved, nothing per node
            # (node ids of someone else's prompt mean nothing on their canvas).
            if name == "run":
                server.send_sync(EVENT_PREFIX + "saved", {"run_id": payload.get("id"), "prompt_id": payload.get("prompt_id")})
            return
        server.send_sync(EVENT_PREFIX + name, payload, sid)


class TelemetryService:
    """Everything telemetry holds in a running ComfyUI."""

    def __init__(self, recorder: Recorder, store: RunStore, events: LiveEvents):
        self.recorder = recorder
        self.store = store
        self.events = events
        self.enabled = False
        self.reason = "not set up"

    def status(self) -> dict:
        return {"enabled": self.enabled, "reason": self.reason, "hooks": list(telemetry_hooks.HOOKS.names),
                "folder": "/".join(("output", "wan_accel", "telemetry"))}


SERVICE: TelemetryService | None = None


def install_routes(service: TelemetryService) -> None:
    from aiohttp import web
    from server import PromptServer

    routes = PromptServer.instance.routes
    store = service.store

    def _json(status: int, payload: dict):
        return web.Response(status=status, text=json.dumps(payload), content_type="application/json")

    @routes.get(ROUTE)
    async def telemetry_status(request):
        return _json(200, service.status())

    @routes.get(ROUTE + "/runs")
    async def telemetry_runs(request):
        status, payload = handle_list(store, dict(request.query))
        return _json(status, payload)

    @routes.get(ROUTE + "/runs/{run_id}")
    async def telemetry_run(request):
        status, ctype, body = handle_get(store, request.match_info.get("run_id", ""), request.query.get("format", "json"))
        return web.Response(status=status, text=body, content_type=ctype)


def setup() -> None:
    """Called once when ComfyUI loads the package: recorder, store, hooks, routes."""
    global SERVICE
    if SERVICE is not None:  # loaded twice: hooks and routes are already in place
        return
    import folder_paths

    events = LiveEvents()
    store = RunStore(folder_paths.get_output_directory)
    recorder = Recorder(models=telemetry_hooks.loaded_models_snapshot, on_event=events.send, store=store,
                        save_in_background=True)
    service = SERVICE = TelemetryService(recorder, store, events)
    install_routes(service)
    try:
        service.enabled, service.reason = telemetry_hooks.install_hooks(recorder, on_prompt=events.prompt_started)
    except Exception as exc:
        service.enabled, service.reason = False, f"hook install failed ({exc})"
    if service.enabled:
        log.info("wan_accel telemetry on (%s); runs saved under output/wan_accel/telemetry", service.reason)
    else:
        log.warning("wan_accel telemetry off: %s", service.reason)
