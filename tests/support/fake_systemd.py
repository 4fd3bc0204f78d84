#!/usr/bin/env python3
"""A fake host systemd and logind on a private D-Bus bus, for tinyvisor's tests.

It owns org.freedesktop.login1 and org.freedesktop.systemd1 and serves the calls the
supervisor makes (docs/contract/device-config.md §4): login1 Manager.Reboot/PowerOff(b), systemd1
Manager.StartUnit/StopUnit/RestartUnit(ss), GetUnit(s), LoadUnit(s), ResetFailedUnit(s) and
StartTransientUnit(ssa(sv)a(sa(sv))), and the unit properties ActiveState, PartOf, Job and
(services) ExecMainStatus. Every call is appended to the log file as one JSON line
{"member": ..., "args": [...]}, so a test can check the exact method and arguments.
It is written with dbus-next, an implementation independent of tinyvisor's own client.

A transient service really runs, 0.3 s after its start job is queued (meanwhile the unit is
"inactive" with a Job): its ExecStart, with every absolute path (the command and the
WorkingDirectory) taken under $FAKE_SYSTEMD_ROOT (the test's host root). While it runs the unit
is "active"; exit 0 makes it "inactive" and collected (CollectMode=inactive: GetUnit then
answers NoSuchUnit, LoadUnit a fresh stub), another code "failed" with ExecMainStatus = code.
Starting a transient unit whose name is active or failed answers org.freedesktop.systemd1.UnitExists.

usage: fake_systemd.py <bus address> <log file> [unit[=partof,...] ...]
Units named on the command line are loaded (inactive); others answer NoSuchUnit.
"""
import os
import asyncio
import json
import sys

from dbus_next import BusType, DBusError, Variant
from dbus_next.aio import MessageBus
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method

LOG = None


def record(member, *args):
    with open(LOG, "a") as f:
        f.write(json.dumps({"member": member, "args": list(args)}) + "\n")


def unit_path(name):
    escaped = "".join(c if c.isalnum() else "_%02x" % ord(c) for c in name)
    return "/org/freedesktop/systemd1/unit/" + escaped


class Unit(ServiceInterface):
    def __init__(self, part_of):
        super().__init__("org.freedesktop.systemd1.Unit")
        self.state = "inactive"
        self.part_of = part_of
        self.service = ServiceProps()
        self.job = 0

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> "s":
        return self.state

    @dbus_property(access=PropertyAccess.READ)
    def PartOf(self) -> "as":
        return self.part_of

    @dbus_property(access=PropertyAccess.READ)
    def Job(self) -> "(uo)":
        return [self.job, "/org/freedesktop/systemd1/job/%d" % self.job if self.job else "/"]


class ServiceProps(ServiceInterface):
    def __init__(self):
        super().__init__("org.freedesktop.systemd1.Service")
        self.status = 0

    @dbus_property(access=PropertyAccess.READ)
    def ExecMainStatus(self) -> "i":
        return self.status


def plain(v):
    """A dbus-next value as JSON (variants unwrapped)."""
    if isinstance(v, Variant):
        return plain(v.value)
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


class Manager(ServiceInterface):
    def __init__(self, units, bus):
        super().__init__("org.freedesktop.systemd1.Manager")
        self.units = units
        self.bus = bus
        # Objects stay exported once made: systemd answers on a unit's path even after it has
        # collected the unit (it loads a fresh stub), and a reader may hold the path meanwhile.
        self.objects = dict(units)

    def _load(self, name):
        unit = self.objects.get(name)
        if unit is None:
            unit = Unit([])
            self.objects[name] = unit
            self.bus.export(unit_path(name), unit)
            self.bus.export(unit_path(name), unit.service)
        self.units[name] = unit
        return unit

    def _collect(self, name):
        unit = self.units.pop(name)
        unit.state = "inactive"
        unit.service.status = 0

    async def _run(self, name, unit, argv, cwd):
        root = os.environ.get("FAKE_SYSTEMD_ROOT", "")
        under = lambda p: root + p if p.startswith("/") else p
        # As systemd: the start job is queued first; the unit reads "inactive" with a job
        # until it runs.
        await asyncio.sleep(0.3)
        unit.job = 0
        unit.state = "active"
        try:
            proc = await asyncio.create_subprocess_exec(
                under(argv[0]), *argv[1:], cwd=under(cwd),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            code = await proc.wait()
        except OSError:
            code = 203
        record("exited", name, code)
        if code == 0:
            self._collect(name)
        else:
            unit.state = "failed"
            unit.service.status = code

    @method()
    def StartTransientUnit(self, name: "s", mode: "s", properties: "a(sv)", aux: "a(sa(sv))") -> "o":
        props = {k: plain(v) for k, v in properties}
        record("StartTransientUnit", name, mode, props, plain(aux))
        if name in self.units and (self.units[name].state != "inactive" or self.units[name].job):
            raise DBusError("org.freedesktop.systemd1.UnitExists",
                            "Unit %s was already loaded or has a fragment file." % name)
        if name in self.units:
            self._collect(name)
        unit = self._load(name)
        unit.job = 4
        argv = props["ExecStart"][0][1]
        asyncio.get_event_loop().create_task(
            self._run(name, unit, argv, props.get("WorkingDirectory", "/")))
        return "/org/freedesktop/systemd1/job/4"

    @method()
    def ResetFailedUnit(self, name: "s"):
        record("ResetFailedUnit", name)
        if self._unit(name).state == "failed":
            self._collect(name)

    @method()
    def LoadUnit(self, name: "s") -> "o":
        if name not in self.units:
            self._load(name)
        return unit_path(name)

    def _unit(self, name):
        if name not in self.units:
            raise DBusError("org.freedesktop.systemd1.NoSuchUnit", "Unit %s not loaded." % name)
        return self.units[name]

    @method()
    def StartUnit(self, name: "s", mode: "s") -> "o":
        record("StartUnit", name, mode)
        self._unit(name).state = "active"
        return "/org/freedesktop/systemd1/job/1"

    @method()
    def StopUnit(self, name: "s", mode: "s") -> "o":
        record("StopUnit", name, mode)
        self._unit(name).state = "inactive"
        return "/org/freedesktop/systemd1/job/2"

    @method()
    def RestartUnit(self, name: "s", mode: "s") -> "o":
        record("RestartUnit", name, mode)
        self._unit(name).state = "active"
        return "/org/freedesktop/systemd1/job/3"

    @method()
    def GetUnit(self, name: "s") -> "o":
        self._unit(name)
        return unit_path(name)


class Login(ServiceInterface):
    def __init__(self):
        super().__init__("org.freedesktop.login1.Manager")

    @method()
    def Reboot(self, interactive: "b"):
        record("Reboot", interactive)

    @method()
    def PowerOff(self, interactive: "b"):
        record("PowerOff", interactive)


async def main():
    global LOG
    address, LOG = sys.argv[1], sys.argv[2]
    units = {}
    for spec in sys.argv[3:]:
        name, _, part_of = spec.partition("=")
        units[name] = Unit([p for p in part_of.split(",") if p])
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    bus.export("/org/freedesktop/systemd1", Manager(units, bus))
    bus.export("/org/freedesktop/login1", Login())
    for name, unit in units.items():
        bus.export(unit_path(name), unit)
        bus.export(unit_path(name), unit.service)
    await bus.request_name("org.freedesktop.systemd1")
    await bus.request_name("org.freedesktop.login1")
    record("ready")
    await asyncio.get_event_loop().create_future()


asyncio.run(main())
