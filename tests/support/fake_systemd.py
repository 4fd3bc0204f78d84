#!/usr/bin/env python3
"""A fake host systemd and logind on a private D-Bus bus, for tinyvisor's tests.

It owns org.freedesktop.login1 and org.freedesktop.systemd1 and serves the calls the
supervisor makes (device-config.md §4): login1 Manager.Reboot/PowerOff(b), systemd1
Manager.StartUnit/StopUnit/RestartUnit(ss) and GetUnit(s), and the unit properties ActiveState
and PartOf. Every call is appended to the log file as one JSON line
{"member": ..., "args": [...]}, so a test can check the exact method and arguments.
It is written with dbus-next, an implementation independent of tinyvisor's own client.

usage: fake_systemd.py <bus address> <log file> [unit[=partof,...] ...]
Units named on the command line are loaded (inactive); others answer NoSuchUnit.
"""
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

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> "s":
        return self.state

    @dbus_property(access=PropertyAccess.READ)
    def PartOf(self) -> "as":
        return self.part_of


class Manager(ServiceInterface):
    def __init__(self, units):
        super().__init__("org.freedesktop.systemd1.Manager")
        self.units = units

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
    bus.export("/org/freedesktop/systemd1", Manager(units))
    bus.export("/org/freedesktop/login1", Login())
    for name, unit in units.items():
        bus.export(unit_path(name), unit)
    await bus.request_name("org.freedesktop.systemd1")
    await bus.request_name("org.freedesktop.login1")
    record("ready")
    await asyncio.get_event_loop().create_future()


asyncio.run(main())
