//! The host's systemd and logind, over the system D-Bus (docs/contract/device-config.md §4):
//! reboot, power off, start/stop/restart a unit, and the two unit properties the supervisor reads.
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
    /// Runs `argv` as the transient service `unit` (`Type=exec`, gone once inactive), in
    /// `working_directory`, after clearing a failed run of the same name.
    fn run_transient_service(
        &self,
        unit: &str,
        argv: &[String],
        working_directory: &str,
    ) -> Result<(), Error>;
    /// A service's `ActiveState` and `ExecMainStatus` (a unit systemd has collected reads as
    /// `inactive` with status 0, which is how a successful transient run ends).
    fn service_state(&self, unit: &str) -> Result<ServiceState, Error>;
}

/// Where a service is and how its main process last exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub active_state: String,
    pub exec_main_status: i32,
    /// A job is queued for the unit (its `Job` id is not 0): a start just asked for reads
    /// `inactive` until systemd runs the job.
    pub job_pending: bool,
}

impl ServiceState {
    /// A job is pending, or the state is neither `inactive` nor `failed`: not finished.
    pub fn running(&self) -> bool {
        self.job_pending || (self.active_state != "inactive" && self.active_state != "failed")
    }
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

impl SystemBus {
    fn manager(
        &self,
        member: &'static str,
        signature: &'static str,
        args: Vec<Value>,
    ) -> Call<'static> {
        Call {
            destination: SYSTEMD,
            path: SYSTEMD_PATH,
            interface: SYSTEMD_MANAGER,
            member,
            signature,
            args,
        }
    }

    fn property(&self, path: &str, interface: &str, property: &str) -> Result<Value, Error> {
        let reply = Connection::open(&self.address)?.call(&Call {
            destination: SYSTEMD,
            path,
            interface: "org.freedesktop.DBus.Properties",
            member: "Get",
            signature: "ss",
            args: vec![Value::Str(interface.into()), Value::Str(property.into())],
        })?;
        reply
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol(format!("{property}: no value")))
    }
}

/// A transient unit property: `(name, variant)`.
fn property(name: &str, value: Value) -> Value {
    Value::Struct(vec![
        Value::Str(name.into()),
        Value::Variant(Box::new(value)),
    ])
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
    fn run_transient_service(
        &self,
        unit: &str,
        argv: &[String],
        working_directory: &str,
    ) -> Result<(), Error> {
        // A failed run of the same name would refuse the new one; none is the usual case.
        let _ = self.call(self.manager("ResetFailedUnit", "s", vec![Value::Str(unit.into())]));
        let command = argv.first().cloned().unwrap_or_default();
        let exec_start = Value::Array(vec![Value::Struct(vec![
            Value::Str(command),
            Value::Array(argv.iter().cloned().map(Value::Str).collect()),
            Value::Bool(false),
        ])]);
        let properties = Value::Array(vec![
            property("Type", Value::Str("exec".into())),
            property("ExecStart", exec_start),
            property("RemainAfterExit", Value::Bool(false)),
            property("CollectMode", Value::Str("inactive".into())),
            property("WorkingDirectory", Value::Str(working_directory.into())),
        ]);
        self.call(self.manager(
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            vec![
                Value::Str(unit.into()),
                Value::Str("fail".into()),
                properties,
                Value::Array(Vec::new()),
            ],
        ))
        .map(drop)
    }
    fn service_state(&self, unit: &str) -> Result<ServiceState, Error> {
        // LoadUnit, unlike GetUnit, answers for a unit systemd has already collected.
        let reply = self.call(self.manager("LoadUnit", "s", vec![Value::Str(unit.into())]))?;
        let path = reply
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Protocol("LoadUnit answered no object path".into()))?
            .to_string();
        let active_state = self
            .property(&path, "org.freedesktop.systemd1.Unit", "ActiveState")?
            .as_str()
            .map(String::from)
            .ok_or_else(|| Error::Protocol("ActiveState is not a string".into()))?;
        let exec_main_status =
            match self.property(&path, "org.freedesktop.systemd1.Service", "ExecMainStatus")? {
                Value::Variant(v) => match *v {
                    Value::I32(n) => n,
                    other => return Err(Error::Protocol(format!("ExecMainStatus is {other:?}"))),
                },
                other => return Err(Error::Protocol(format!("ExecMainStatus is {other:?}"))),
            };
        let job_pending = match self.property(&path, "org.freedesktop.systemd1.Unit", "Job")? {
            Value::Variant(v) => {
                matches!(&*v, Value::Struct(f) if f.first().is_some_and(|id| *id != Value::U32(0)))
            }
            _ => false,
        };
        Ok(ServiceState {
            active_state,
            exec_main_status,
            job_pending,
        })
    }
}
