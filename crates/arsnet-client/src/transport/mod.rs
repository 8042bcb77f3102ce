//! The local control channel's transport, and the only code that knows what it is made of.
//!
//! Everything above this module (framing, the client, the daemon's control handler) speaks
//! to a [`Stream`], accepts from a [`Listener`] and asks a connection who its [`Peer`] is;
//! none of it names a socket type. A backend provides exactly this surface:
//!
//! - [`connect`]: open a connection to the daemon at a path;
//! - [`Listener::bind`], [`Listener::adopt`] (a listener inherited from the service
//!   manager) and [`Listener::accept`], which also yields the caller's [`Peer`];
//! - [`Stream`]: `AsyncRead + AsyncWrite`, [`Stream::peer`], [`Stream::split`], and
//!   [`Stream::send_with_handles`] / [`Stream::recv_with_handles`], which pass open files
//!   (a [`Handle`]) from the client to the daemon with the first byte of a frame, so that
//!   the daemon acts on what the *caller* could open;
//! - [`is_live`]: whether something accepts at a path (a stale endpoint may be replaced).
//!
//! The Unix backend ([`unix`]: a Unix-domain stream socket, `SO_PEERCRED`, `SCM_RIGHTS`) is
//! the only one today. A Windows named-pipe backend is one more file beside it
//! (`windows.rs`: `NamedPipeServer`/`NamedPipeClient`, the client's SID from
//! `GetNamedPipeClientProcessId`, handles passed with `DuplicateHandle`), selected below.
//! The rules that judge a [`Peer`] are not transport: they live with their owners
//! (`client::check_daemon`, the daemon's `access` and `caller`) and speak uids today; the
//! README says what else is not supported yet. An architecture test keeps every module but
//! this one from naming a socket type, the peer's credentials or descriptor passing.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{
    connect, is_live, BorrowedHandle, Handle, Listener, Peer, ReadHalf, Stream, WriteHalf,
};

#[cfg(not(unix))]
compile_error!(
    "ArsNet's control transport has a Unix-domain socket backend only; a named-pipe backend \
     (transport/windows.rs) is not written yet"
);

/// Most descriptors one request may carry (the protocol's limit).
pub use arsnet_proto::limits::CONTROL_MAX_FDS as MAX_HANDLES;
