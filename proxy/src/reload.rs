//! SIGHUP: re-read the identity material now (files re-read at once, the Workload API
//! reconnected, the dev CA re-issues). Updates still go through validation: a bad one is
//! refused and the current identity keeps serving.

use ward_certs::Reload;

/// Asks the identity source behind `reload` to re-read now.
pub fn reload_identity(reload: &Reload) {
    tracing::info!("re-reading the identity material");
    reload.trigger();
}

/// Re-reads the identity on every SIGHUP, until the task is dropped. Returns at once (with an
/// error logged) if the signal handler cannot be installed.
pub async fn reload_on_sighup(reload: Reload) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; identity re-reads on SIGHUP are off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP");
        reload_identity(&reload);
    }
}
