//! SIGHUP: re-read the identity material now (files re-read at once, the Workload API
//! reconnected, the dev CA re-issues). Updates still go through validation: a bad one is
//! refused and the current identity keeps serving.

use ward_certs::Reload;

/// Asks the identity source behind `reload` to re-read now.
pub fn reload_identity(reload: &Reload) {
    tracing::info!("re-reading the identity material");
    reload.trigger();
}
