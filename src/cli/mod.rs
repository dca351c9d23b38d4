//! Commands of the `tollgate` binary that are more than a call into a service.

pub mod cert;
