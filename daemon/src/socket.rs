//! A daemon's unix socket, mode 0600 by its owner, and the peers allowed on it: a connection whose
//! peer's uid is not listed (or cannot be read, `SO_PEERCRED`) is closed before any request.

use tokio_stream::{Stream, StreamExt as _};

/// The connections of `listener` whose peer's uid is in `allowed_uids`; others are dropped and
/// logged (rate-limited), naming `setting`, the config key that lists the uids.
pub fn allowed_peers(listener: tokio::net::UnixListener, allowed_uids: Vec<u32>, setting: &'static str) -> impl Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).filter(move |conn| match conn {
        Ok(stream) => match stream.peer_cred() {
            Ok(cred) if allowed_uids.contains(&cred.uid()) => true,
            Ok(cred) => {
                crate::limited!(warn, "peer-uid", uid = cred.uid(), pid = ?cred.pid(), "refused a connection from a uid not in {setting}");
                false
            }
            Err(e) => {
                crate::limited!(warn, "peer-cred", error = %e, "refused a connection whose peer credentials cannot be read ({setting})");
                false
            }
        },
        Err(_) => true,
    })
}
