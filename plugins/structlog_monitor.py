"""``structlog``: one JSON log line per request (and per event batch, and per error).

Each line carries the request id, variant, model version, k, candidates per source and per-stage
timings. No feature values are logged, and the user appears only as a pseudonymous key unless
``include_user_id`` is set. The key is a hash salted with a secret of the workspace's own
(``<workspace>/secrets/user_key_salt``, generated on first use, mode 0600), so keys cannot be
recomputed from user ids by anyone without the workspace, and servers sharing it agree."""

from __future__ import annotations

import hashlib
import random
import secrets
from typing import Any

import endcap
import structlog
from endcap.errors import EndcapError
from endcap.logs import info_line
from endcap.serving.secrets import workspace_secret
from pydantic import Field

SALT_SECRET = "user_key_salt"
"""The workspace secret (see :func:`endcap.serving.secrets.workspace_secret`) salting user keys."""
USER_KEYS_KEPT = 100_000
"""Pseudonymous keys kept in memory (about 150 bytes each); all are dropped when it is reached."""


class StructlogMonitorConfig(endcap.ComponentConfig):
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    """Share of requests logged; errors are always logged."""
    include_items: bool = False
    """Also log the recommended item ids."""
    include_user_id: bool = False
    """Log the raw user id; by default only a pseudonymous key (a salted hash) identifies the user."""
    salt: str | None = None
    """Salt of the pseudonymous user key. Default: the workspace's own secret, generated on first
    use (a monitor with no workspace at hand draws one per process)."""


class StructlogMonitor(endcap.Monitor):
    Config = StructlogMonitorConfig
    config: StructlogMonitorConfig

    def __init__(self, name: str, config: StructlogMonitorConfig) -> None:
        super().__init__(name, config)
        self.log = structlog.get_logger("endcap.requests")
        self._user_keys: dict[str, str] = {}
        self._salt = config.salt

    def load(self, context: endcap.ModelContext) -> None:
        if self.config.salt is None and context.workspace is not None:
            salt = workspace_secret(context.workspace, SALT_SECRET)
            if salt != self._salt:
                self._salt, self._user_keys = salt, {}

    def on_request(self, record: endcap.RequestRecord) -> None:
        if self.config.sample_rate < 1.0 and random.random() >= self.config.sample_rate:
            return
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            **self._user(record.query.user_id),
            "k": record.query.k,
            "returned": len(record.item_ids),
            "candidates": dict(record.candidates_per_source),
            "stage_ms": {stage: round(ms, 3) for stage, ms in record.timings.ms.items()},
            "model_version": record.model_version,
            "variant": record.query.variant,
        }
        if record.errors:
            fields["source_errors"] = dict(record.errors)
        if record.cold_start:
            fields["cold_start"] = True
        if record.online_miss:
            fields["online_miss"] = True
        if self.config.include_items:
            fields["items"] = list(record.item_ids)
        info_line(self.log, "recommend", fields)

    def _user(self, user_id: str) -> dict[str, str]:
        if self.config.include_user_id:
            return {"user_id": user_id}
        return {"user_key": self._user_key(user_id)}

    def _user_key(self, user_id: str) -> str:
        """The pseudonymous key (kept for recently logged users: a shopper's requests repeat)."""
        key = self._user_keys.get(user_id)
        if key is None:
            if self._salt is None:  # not loaded with a workspace: a salt of this process's own
                self._salt = secrets.token_hex(32)
            if len(self._user_keys) >= USER_KEYS_KEPT:
                self._user_keys.clear()
            key = self._user_keys[user_id] = hashlib.sha256(f"{self._salt}:{user_id}".encode()).hexdigest()[:16]
        return key

    def on_error(self, request_id: str, query: endcap.Query | None, error: BaseException) -> None:
        """A refused request (an :class:`endcap.EndcapError`: its status says why) is one line; any
        other failure also carries its traceback."""
        unexpected = not isinstance(error, EndcapError)
        self.log.warning(
            "request_failed",
            request_id=request_id,
            error=f"{type(error).__name__}: {error}",
            exc_info=error if unexpected else None,
        )

    def on_events(self, events: tuple[endcap.Event, ...]) -> None:
        self.log.info("events_recorded", count=len(events))


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(StructlogMonitor, type_name="structlog")
