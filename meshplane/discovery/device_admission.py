"""Which live edge devices the current sites admit into config: part of the merge.

Owns `DeviceAdmission`, the verdict on each live registration under the sites (admitted, or left
out with its reasons), kept between merges. A policy change may remove a site or narrow its
address ranges after devices registered under it; those devices stay registered (their leases
run) but leave the config until the sites admit them again. Costs what changed: a merge re-checks
only the devices the registry reports as changed (`DeviceChanges`), and every device only when
the sites change. Pure but for one log line per device left out each time it is checked.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from typing import Protocol

from meshplane.model import Device, Site
from meshplane.model.changes import DeviceChanges
from meshplane.model.mesh import device_order
from meshplane.model.problems import Problem

log = logging.getLogger(__name__)


class LiveDevices(Protocol):
    """The registry as the merge reads it: its live devices, and each one by id."""

    def devices(self) -> Iterable[Device]: ...

    def device(self, device_id: str) -> Device | None: ...


class DeviceAdmission:
    """The admitted devices under some sites, brought up to date by `admit`. Use from one thread."""

    def __init__(self) -> None:
        # The sites every verdict was reached under; None: no verdicts yet.
        self._checked_sites: tuple[Site, ...] | None = None
        self._sites_by_id: dict[str, Site] = {}
        # Per live device id: why the sites leave it out (empty: admitted).
        self._verdicts: dict[str, tuple[Problem, ...]] = {}
        # The admitted devices in mesh order (`device_order`: site, then id), their keys (parallel
        # lists, for bisect), and each admitted device's site (to find its key by id).
        self._admitted_keys: list[tuple[str, str]] = []
        self._admitted: list[Device] = []
        self._site_of: dict[str, str] = {}
        self._devices: tuple[Device, ...] | None = ()  # `_admitted` as handed out; None: stale
        # Devices checked against sites since start (what merges cost, for tests and profiling).
        self.checks = 0

    def admit(
        self, sites: tuple[Site, ...], live: LiveDevices, changes: DeviceChanges
    ) -> tuple[tuple[Device, ...], bool]:
        """The live devices `sites` admit, in mesh order (by site, then id), and whether they differ
        from the last call's.

        `changes`: the devices changed in `live` since the last call (`EdgeRegistry.take_changes`);
        every device is checked again when it says `everything` or when `sites` differ from the
        last call's."""
        if changes.everything or sites != self._checked_sites:
            self._check_all(sites, live)
        else:
            for device_id in sorted(changes.ids):
                self._check_one(device_id, live.device(device_id))
        if self._devices is not None:
            return self._devices, False
        self._devices = tuple(self._admitted)
        return self._devices, True

    def left_out(self) -> dict[str, tuple[Problem, ...]]:
        """The live devices the sites leave out, by id, with the reasons (as of the last `admit`)."""
        return {device_id: problems for device_id, problems in self._verdicts.items() if problems}

    def _check_all(self, sites: tuple[Site, ...], live: LiveDevices) -> None:
        before = self._admitted
        self._checked_sites = sites
        self._sites_by_id = {site.id: site for site in sites}
        self._verdicts = {}
        admitted = sorted((device for device in live.devices() if not self._verdict(device)), key=device_order)
        self._admitted = admitted
        self._admitted_keys = [device_order(device) for device in admitted]
        self._site_of = {device.id: device.site for device in admitted}
        if self._admitted != before or self._devices is None:
            self._devices = None

    def _check_one(self, device_id: str, device: Device | None) -> None:
        """Brings the verdict on `device_id` (and the admitted lists) to its live registration (None: gone)."""
        if device is None:
            self._verdicts.pop(device_id, None)
            admitted = False
        else:
            admitted = not self._verdict(device)
        site = self._site_of.get(device_id)
        if site is not None:  # admitted until now
            index = bisect.bisect_left(self._admitted_keys, (site, device_id))
            if admitted and device is not None and device.site == site:
                if self._admitted[index] == device:
                    return  # re-registered as it was
                self._admitted[index] = device
                self._devices = None
                return
            del self._admitted_keys[index], self._admitted[index]
            del self._site_of[device_id]
        elif not admitted:
            return  # left out before and after: the admitted devices are as they were
        if admitted and device is not None:
            index = bisect.bisect_left(self._admitted_keys, device_order(device))
            self._admitted_keys.insert(index, device_order(device))
            self._admitted.insert(index, device)
            self._site_of[device_id] = device.site
        self._devices = None

    def _verdict(self, device: Device) -> tuple[Problem, ...]:
        """Checks `device` against the current sites and records why it is left out (empty: it is not)."""
        self.checks += 1
        problems = tuple(device.problems(self._sites_by_id))
        if problems:
            log.warning("edge device left out of config: %s", "; ".join(map(str, problems)))
        self._verdicts[device.id] = problems
        return problems
