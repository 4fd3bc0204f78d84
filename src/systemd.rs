//! The host's systemd and logind, over the system D-Bus (device-config.md §4): reboot, power
//! off, start/stop/restart a unit, and the two unit properties the supervisor reads.
//!
//! Behind a small trait so the state engine and the API code do not care how the host is
//! reached; the one implementation opens a connection per call (calls are rare, and an idle
//! supervisor keeps no socket open).

use crate::dbus::{Call, Connection, Error, Value};

pub trait HostControl: Send + Sync {
    fn reboot(&self) -> Result<(), Error>;
    fn power_off(&self) -> Result<(), Error>;
    fn start_unit(&self, unit: &str) -> Result<(), Error>;
    fn stop_unit(&self, unit: &str) -> Result<(), Error>;
    fn restart_unit(&self, unit: &str) -> Result<(), Error>;
    /// `ActiveState` is neither `inactive` nor `deactivating`; a unit that is not loaded is not
    /// active.
    fn unit_active(&self, unit: &str) -> Result<bool, Error>;
    /// The unit's `PartOf` list (empty for a unit that is not loaded).
    fn unit_part_of(&self, unit: &str) -> Result<Vec<String>, Error>;
}

/// systemd and logind on the bus at `DBUS_SYSTEM_BUS_ADDRESS`.
pub struct SystemBus {
    address: String,
}

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

impl SystemBus {
    pub fn new(address: &str) -> SystemBus {
        SystemBus {
            address: address.to_string(),
        }
    }

    fn call(&self, call: Call) -> Result<Vec<Value>, Error> {
        Connection::open(&self.address)?.call(&call)
    }

    fn login1(&self, member: &str) -> Result<(), Error> {
        // interactive = false: no polkit prompt.
        self.call(Call {
            destination: "org.freedesktop.login1",
            path: "/org/freedesktop/login1",
            interface: "org.freedesktop.login1.Manager",
            member,
            signature: "b",
            args: vec![Value::Bool(false)],
        })
        .map(drop)
    }

    fn unit_job(&self, member: &str, unit: &str) -> Result<(), Error> {
        self.call(Call {
            destination: SYSTEMD,
            path: SYSTEMD_PATH,
            interface: SYSTEMD_MANAGER,
            member,
            signature: "ss",
            args: vec![Value::Str(unit.into()), Value::Str("fail".into())],
        })
        .map(drop)
    }

    /// A property of a loaded unit; `None` when the unit is not loaded.
    fn unit_property(&self, unit: &str, property: &str) -> Result<Option<Value>, Error> {
        let mut conn = Connection::open(&self.address)?;
        let path = match conn.call(&Call {
            destination: SYSTEMD,
            path: SYSTEMD_PATH,
            interface: SYSTEMD_MANAGER,
            member: "GetUnit",
            signature: "s",
            args: vec![Value::Str(unit.into())],
        }) {
            Ok(reply) => reply
                .first()
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| Error::Protocol("GetUnit answered no object path".into()))?,
            Err(Error::Remote { name, .. }) if name == NO_SUCH_UNIT => return Ok(None),
            Err(e) => return Err(e),
        };
        let reply = conn.call(&Call {
            destination: SYSTEMD,
            path: &path,
            interface: "org.freedesktop.DBus.Properties",
            member: "Get",
            signature: "ss",
            args: vec![
                Value::Str("org.freedesktop.systemd1.Unit".into()),
                Value::Str(property.into()),
            ],
        })?;
        Ok(reply.into_iter().next())
    }
}

impl HostControl for SystemBus {
    fn reboot(&self) -> Result<(), Error> {
        self.login1("Reboot")
    }
    fn power_off(&self) -> Result<(), Error> {
        self.login1("PowerOff")
    }
    fn start_unit(&self, unit: &str) -> Result<(), Error> {
        self.unit_job("StartUnit", unit)
    }
    fn stop_unit(&self, unit: &str) -> Result<(), Error> {
        self.unit_job("StopUnit", unit)
    }
    fn restart_unit(&self, unit: &str) -> Result<(), Error> {
        self.unit_job("RestartUnit", unit)
    }
    fn unit_active(&self, unit: &str) -> Result<bool, Error> {
        Ok(self
            .unit_property(unit, "ActiveState")?
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| s != "inactive" && s != "deactivating"))
    }
    fn unit_part_of(&self, unit: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .unit_property(unit, "PartOf")?
            .and_then(|v| v.as_strings())
            .unwrap_or_default())
    }
}
