//! The USB4STREAM fabric: Thunderbolt bus discovery in sysfs (`bus`), the status
//! report (`status`) and stream set-up in ConfigFS (`link`).

pub mod bus;
pub mod link;
pub mod status;
