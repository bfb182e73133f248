//! The process's descriptor limit: raised to its hard limit at start, since every connection
//! holds one or two descriptors and distributions still default the soft limit to 1,024.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The soft `RLIMIT_NOFILE` now (`u64::MAX` when unlimited).
pub fn nofile() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit before and after.
/// Failing to raise it is not fatal: the limit stays as it was and the caller logs why.
pub fn raise_nofile() -> Result<(u64, u64), (u64, std::io::Error)> {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    if limit.current == limit.maximum {
        return Ok((before, before));
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Ok((before, nofile())),
        Err(e) => Err((before, e.into())),
    }
}
