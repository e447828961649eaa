"""Which version the engine serves, by the policy (``COLORIZER_SERVE``), and which version a
request's ``?model=`` means (a number, ``default`` or a label's name)."""

from __future__ import annotations

import logging
import time

from common.labels import LATEST, Labels, LabelsUnreadable, Policy, UnknownLabel, is_label_name, parse_policy
from common.serving import ServingReports, replica_id
from common.store import DEFAULT_VERSION, Version, version_key, version_rank
from models.store import ModelStore

log = logging.getLogger(__name__)

# A replica's report is rewritten at least this often while nothing changes (it is live for
# common.serving.LIVE_SECONDS, five times as long).
HEARTBEAT_SECONDS = 60.0


class VersionChooser:
    """The serving policy over ``store``: ``latest`` takes the newest loadable version (the
    packaged default while there is none); a pinned version is served alone; a label is followed
    wherever it moves (back to an older version too), with the packaged default until it is set."""

    def __init__(self, store: ModelStore, policy: Policy | str = LATEST):
        self.store = store
        self.policy = policy if isinstance(policy, Policy) else parse_policy(policy)
        self.labels = Labels(store.root)

    def candidates(self, served: Version | None) -> list[Version]:
        """Versions worth loading instead of ``served``, best first."""
        if self.policy.kind == LATEST:
            floor = version_rank(served) if served is not None else -1
            found: list[Version] = [v for v in self.store.versions() if v > floor]
            if floor < 0 and self.store.has_default():
                found.append(DEFAULT_VERSION)
            return sorted(found, key=version_rank, reverse=True)
        wanted, unset = self._wanted()
        found = [wanted] if wanted is not None else []
        if unset and served is None and self.store.has_default():
            found.append(DEFAULT_VERSION)  # until the label is set (not when it cannot be read)
        return [v for v in found if v != served]

    def _wanted(self) -> tuple[Version | None, bool]:
        """(the version the policy names now, whether that is None because its label is not set).
        None without ``unset``: latest, or labels that cannot be read (the served model stays)."""
        if self.policy.kind == "version":
            return self.policy.value, False
        if self.policy.kind != "label":
            return None, False
        try:
            return self.labels.get(str(self.policy.value)), False
        except UnknownLabel:
            return None, True
        except LabelsUnreadable as exc:
            log.warning("the labels cannot be read; the served model stays: %s", exc)
            return None, False

    def target(self) -> Version | None:
        """The version the policy names now: the pinned one, or the label's (None while the label
        is not set, or the labels cannot be read); None for latest."""
        return self._wanted()[0]

    def resolve(self, version: int | str) -> Version:
        """A version number, ``"default"`` or a label's name as the version it means; raises
        UnknownVersion (UnknownLabel for a label that is not set) or LabelsUnreadable."""
        if isinstance(version, str) and is_label_name(version.strip()):
            return self.labels.get(version.strip())
        return version_key(version)

    def unserved_reason(self, failed: dict[Version, str]) -> str | None:
        """Why nothing is served under a pinned or labelled policy, in a sentence; None under latest."""
        if self.policy.kind == LATEST:
            return None
        target, unset = self._wanted()
        if unset:
            return (
                f"no model is loaded: label {self.policy.value!r} (COLORIZER_SERVE) is not set and no "
                f"default model is installed (PUT /models/labels/{self.policy.value})"
            )
        if target is None:
            return "no model is loaded: the store's labels.json cannot be read (fix or remove it)"
        named = f"no model is loaded: version {target} (COLORIZER_SERVE)"
        if target in failed:
            return f"{named} cannot be loaded: {failed[target]}"
        return f"{named} does not exist"


class ServingReporter:
    """This replica's report in the store of what it serves (``common.serving``); a store it cannot
    write to is logged once and otherwise ignored (reports are for retention and operators)."""

    def __init__(self, store: ModelStore):
        self.reports = ServingReports(store.root)
        self.replica = replica_id()
        self._warned = False
        self._last: tuple | None = None  # (served, loading, policy, when) of the last report written

    def report(self, served: Version | None, loading: Version | None, policy: Policy) -> None:
        """Write the report when what it says changed, else at most every HEARTBEAT_SECONDS (it
        stays live for LIVE_SECONDS): the watcher calls this at every look at the store."""
        now = time.monotonic()
        state = (served, loading, str(policy))
        if self._last is not None and self._last[:3] == state and now - self._last[3] < HEARTBEAT_SECONDS:
            return
        try:
            self.reports.report(self.replica, served, loading, str(policy))
            self._last = (*state, now)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot report what this replica serves in the store: %s", exc)
                self._warned = True

    def withdraw(self) -> None:
        self._last = None
        try:
            self.reports.remove(self.replica)
        except OSError:
            pass
