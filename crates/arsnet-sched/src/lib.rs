//! ArsNet download scheduler: a sans-IO state machine that decides which server fetches which
//! segment, when to give up on a connection, and when to try a server again.
//!
//! It owns no socket, clock, thread or file. The driver (arsnet-engine) feeds it events —
//! header received, bytes progressed, segment delivered (and whether it verified), cancel
//! answered, connection lost, time passed — each with the current time as a [`Duration`]
//! since an epoch of the driver's choosing, and carries out the [`Action`]s it queues:
//! connect, request, cancel, disconnect. Being pure is what lets the tests run thousands of
//! simulated servers on virtual time.
//!
//! Scheduling is pull-based: every active connection keeps up to `pipeline_depth` segments in
//! flight and takes the lowest Missing segment whenever a slot frees, so faster servers fetch
//! more. Segments of a failed connection return to the pool at once and go straight to
//! connections with free slots. When nothing is left to hand out, idle connections duplicate
//! the oldest outstanding segments (endgame); the first verified copy wins and the others are
//! cancelled. A connection that sends nothing while others deliver (a stopped process behind
//! an open socket) is dropped after the laggard limit, in any phase of the job, rather than
//! after `stall_timeout`, which remains the bound when nobody delivers. Failed servers
//! reconnect after a doubling, capped backoff; servers that send bad data or a different
//! header are blamed and never contacted again. A server that never answered is given up
//! after `Config::max_tries` attempts while the job has no verified segment, and a job whose
//! servers all gave up (or were blamed) fails with [`FailReason::Unreachable`] instead of
//! waiting forever; a job holding verified data keeps retrying, since it is resumable.
//!
//! Once the job is [`Phase::Complete`] the scheduler emits nothing more (not even cancels for
//! copies still in flight): the driver closes every connection itself.
//!
//! A driver's loop, in outline:
//!
//! ```
//! use std::time::Duration;
//! use arsnet_sched::{Action, Config, Layout, Phase, Scheduler, SegmentVerdict};
//!
//! let layout = Layout { segment_count: 2, size: 2 << 20, fingerprint: [0; 32], content: [0; 32] };
//! let mut sched = Scheduler::new(Config::default(), 1, Duration::ZERO);
//! let mut now = Duration::ZERO;
//! while sched.phase() != Phase::Complete {
//!     now += Duration::from_millis(1);
//!     // A real driver waits for the network or for `sched.next_deadline()`; this one
//!     // answers every action at once, as a perfect server would.
//!     while let Some(action) = sched.poll_action() {
//!         match action {
//!             Action::Connect { conn, .. } => sched.on_header(now, conn, layout),
//!             Action::Request { conn, segment } => {
//!                 assert_eq!(sched.on_segment(now, conn, segment, true), SegmentVerdict::Store);
//!             }
//!             Action::Cancel { conn, segment } => sched.on_cancelled(now, conn, segment),
//!             Action::Disconnect { .. } => {}
//!         }
//!     }
//!     sched.on_tick(now);
//! }
//! assert_eq!(sched.segments_done(), 2);
//! ```
//!
//! [`Duration`]: std::time::Duration

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod action;
mod bitset;
mod config;
mod ids;
mod scheduler;
mod segments;
mod servers;
mod status;

pub use action::{Action, DropReason, SegmentVerdict};
pub use config::Config;
pub use ids::{ConnId, ContentVotes, Layout, ServerId};
pub use scheduler::Scheduler;
pub use status::{FailReason, Phase, ServerEnd, ServerState, ServerStats, ALL_BLAMED, NO_SERVERS};
