//! Running totals for the daemon's lifetime, behind the registry's mutex: what the metrics'
//! counters report. They are added to as bytes and job ends are accounted, never summed over
//! the job table, because finished jobs are pruned from it (`keep_finished_jobs`) and a
//! counter must never go down while the daemon runs.

use arsnet_proto::control::JobState;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Segment bytes received from sources, by every job (verified or not).
    pub downloaded_bytes: u64,
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub jobs_cancelled: u64,
    /// Bytes sent by groups that were removed: their ports' counters went with them.
    pub served_bytes_of_removed_groups: u64,
}

impl Totals {
    /// A job has just ended for good in `state` (counted once per end: a failed job that is
    /// resumed and fails again counts twice).
    pub fn job_finished(&mut self, state: &JobState) {
        let counter = match state {
            JobState::Completed => &mut self.jobs_completed,
            JobState::Failed(_) => &mut self.jobs_failed,
            JobState::Cancelled => &mut self.jobs_cancelled,
            _ => return,
        };
        *counter = counter.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ends_are_counted() {
        let mut t = Totals::default();
        for state in [
            JobState::Completed,
            JobState::Completed,
            JobState::Failed("x".into()),
            JobState::Cancelled,
            JobState::Running,
            JobState::Paused,
        ] {
            t.job_finished(&state);
        }
        assert_eq!(
            (t.jobs_completed, t.jobs_failed, t.jobs_cancelled),
            (2, 1, 1)
        );
    }
}
