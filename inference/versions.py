"""Which version the engine serves, by the policy (``COLORIZER_SERVE``), and which version a
request's ``?model=`` means (a number, ``default`` or a label's name)."""

from __future__ import annotations

import logging

from common.labels import LATEST, Labels, LabelsUnreadable, Policy, UnknownLabel, is_label_name, parse_policy
from common.serving import ServingReports, replica_id
from common.store import DEFAULT_VERSION, Version, version_key, version_rank
from models.store import ModelStore

log = logging.getLogger(__name__)


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
        wanted = self.target()
        found = [wanted] if wanted is not None else []
        if (
            self.policy.kind == "label"
            and served is None
            and self._label_unset()
            and self.store.has_default()
        ):
            found.append(DEFAULT_VERSION)  # until the label is set (not when it cannot be read)
        return [v for v in dict.fromkeys(found) if v != served]

    def _label_unset(self) -> bool:
        try:
            self.labels.get(str(self.policy.value))
        except UnknownLabel:
            return True
        except LabelsUnreadable:
            return False
        return False

    def target(self) -> Version | None:
        """The version the policy names now: the pinned one, or the label's (None while the label
        is not set, or the labels cannot be read: then the served model stays); None for latest."""
        if self.policy.kind == "version":
            return self.policy.value
        if self.policy.kind == "label":
            try:
                return self.labels.get(str(self.policy.value))
            except UnknownLabel:
                return None
            except LabelsUnreadable as exc:
                log.warning("the labels cannot be read; the served model stays: %s", exc)
                return None
        return None

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
        target = self.target()
        if target is None and not self._label_unset():
            return "no model is loaded: the store's labels.json cannot be read (fix or remove it)"
        if target is None:
            return (
                f"no model is loaded: label {self.policy.value!r} (COLORIZER_SERVE) is not set and no "
                f"default model is installed (PUT /models/labels/{self.policy.value})"
            )
        if target in failed:
            return (
                f"no model is loaded: version {target} (COLORIZER_SERVE) cannot be loaded: {failed[target]}"
            )
        return f"nothing served: version {target} (COLORIZER_SERVE) does not exist"


class ServingReporter:
    """This replica's report in the store of what it serves (``common.serving``); a store it cannot
    write to is logged once and otherwise ignored (reports are for retention and operators)."""

    def __init__(self, store: ModelStore):
        self.reports = ServingReports(store.root)
        self.replica = replica_id()
        self._warned = False

    def report(self, served: Version | None, loading: Version | None, policy: Policy) -> None:
        try:
            self.reports.report(self.replica, served, loading, str(policy))
        except OSError as exc:
            if not self._warned:
                log.warning("cannot report what this replica serves in the store: %s", exc)
                self._warned = True

    def withdraw(self) -> None:
        try:
            self.reports.remove(self.replica)
        except OSError:
            pass
