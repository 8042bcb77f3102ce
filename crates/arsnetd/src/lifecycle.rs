//! A download job's lifecycle, as one pure state machine: the one place that decides a job's
//! state. The engine reports facts (what it is doing, how a run ended); operators ask
//! (pause, resume, cancel, fetch -r); the daemon starts and stops runs. Each of those is an
//! event here, answered with the new state and what the caller must do (send the running
//! engine a command, remove the partial files). No I/O, no clock: every rule is unit-tested
//! below, exhaustively over the states.

use arsnet_engine::download::{Activity, JobCommand};
use arsnet_proto::control::JobState;

/// Why a running job is being stopped. Later requests may only raise it (run < shutdown <
/// pause < cancel): a paused job stays paused through a daemon restart, and a cancel is never
/// undone by a pause that was still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Intent {
    Run,
    Shutdown,
    Pause,
    Cancel { keep: bool },
}

/// How one run of the engine ended (the engine's outcome, without its details).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed(String),
    Stopped,
    Cancelled,
}

/// What the caller must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    /// Tell the running engine.
    Command(JobCommand),
    /// Remove the job's partial files (journal first).
    RemovePartial,
}

/// An operator request that does not apply to the job's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job is {} and cannot be {verb}", state.label())]
pub struct Refused {
    pub state: JobState,
    pub verb: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// The state while no engine runs (and `Running` while one does).
    state: JobState,
    /// Set while an engine task runs the job: what was last asked of it.
    live: Option<Intent>,
    /// The next start adopts the partial files (any start after the first).
    resume_next: bool,
    /// Was running when the daemon stopped: starts before jobs that were merely queued.
    restored_running: bool,
}

impl Lifecycle {
    /// A job just asked for: queued; `resume` adopts partial files on its first start.
    pub fn queued(resume: bool) -> Self {
        Lifecycle {
            state: JobState::Queued,
            live: None,
            resume_next: resume,
            restored_running: false,
        }
    }

    /// A job read back from the state file, as saved by [`Lifecycle::persisted`]. One that
    /// was running is queued again, ahead of the others; one that ever ran resumes.
    pub fn restored(saved: JobState, ran_before: bool) -> Self {
        let was_running = matches!(saved, JobState::Running | JobState::Waiting);
        let ran =
            ran_before || was_running || matches!(saved, JobState::Paused | JobState::Failed(_));
        Lifecycle {
            state: if was_running { JobState::Queued } else { saved },
            live: None,
            resume_next: ran,
            restored_running: was_running,
        }
    }

    /// The state to show, given what a running engine last reported doing.
    pub fn state(&self, activity: Activity) -> JobState {
        match self.live {
            Some(_) if activity == Activity::Waiting => JobState::Waiting,
            Some(_) => JobState::Running,
            None => self.state.clone(),
        }
    }

    /// The state written to disk. Decisions are saved as soon as they are asked for, so a
    /// crash while the job stops keeps them; a job stopped by shutdown stays "running" so
    /// that the next start continues it.
    pub fn persisted(&self) -> JobState {
        match self.live {
            Some(Intent::Pause) => JobState::Paused,
            Some(Intent::Cancel { .. }) => JobState::Cancelled,
            Some(Intent::Run | Intent::Shutdown) => JobState::Running,
            None => self.state.clone(),
        }
    }

    /// Whether the next start adopts partial files (saved with the job).
    pub fn resumes(&self) -> bool {
        self.resume_next
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Whether the job may still continue its partial files (so no other job may take
    /// them): anything not completed or cancelled.
    pub fn owns_partial_files(&self) -> bool {
        !matches!(self.state, JobState::Completed | JobState::Cancelled)
    }

    /// Ended for good and not running: may be forgotten.
    pub fn is_finished(&self) -> bool {
        self.live.is_none() && self.state.is_terminal()
    }

    /// Whether the job waits for a slot; `Some(rank)` orders the queue (lower first).
    pub fn queue_rank(&self) -> Option<u8> {
        (self.live.is_none() && self.state == JobState::Queued)
            .then_some(if self.restored_running { 0 } else { 1 })
    }

    /// The daemon starts a run. Returns whether it adopts partial files.
    pub fn start(&mut self) -> bool {
        let resume = self.resume_next;
        self.resume_next = true;
        self.restored_running = false;
        self.state = JobState::Running;
        self.live = Some(Intent::Run);
        resume
    }

    fn raise(&mut self, intent: Intent, command: JobCommand) -> Effect {
        if let Some(current) = self.live.as_mut() {
            if matches!(intent, Intent::Cancel { .. }) || intent > *current {
                *current = intent;
            }
        }
        Effect::Command(command)
    }

    // One rule for every request: asking for the state a job is already in (or already on
    // its way to) succeeds and changes nothing; asking for one it can no longer reach is
    // refused, naming the state it is in.

    pub fn pause(&mut self) -> Result<Effect, Refused> {
        if self.live.is_some() {
            return Ok(self.raise(Intent::Pause, JobCommand::Stop));
        }
        match self.state {
            JobState::Queued => {
                self.state = JobState::Paused;
                Ok(Effect::Nothing)
            }
            JobState::Paused => Ok(Effect::Nothing),
            _ => Err(self.refuse("paused")),
        }
    }

    /// `resume`, and `fetch -r` attaching to a stopped job: queued again, adopting. Returns
    /// whether the job was stopped (a queued or running job is left as it is).
    pub fn resume(&mut self) -> Result<bool, Refused> {
        match (&self.state, self.live) {
            (JobState::Paused | JobState::Failed(_), None) => {
                self.state = JobState::Queued;
                self.resume_next = true;
                Ok(true)
            }
            (_, Some(Intent::Run | Intent::Shutdown)) | (JobState::Queued, None) => Ok(false),
            _ => Err(self.refuse("resumed")),
        }
    }

    pub fn cancel(&mut self, keep: bool) -> Result<Effect, Refused> {
        if self.live.is_some() {
            return Ok(self.raise(Intent::Cancel { keep }, JobCommand::Cancel { keep }));
        }
        match self.state {
            JobState::Cancelled => return Ok(Effect::Nothing),
            JobState::Completed => return Err(self.refuse("cancelled")),
            _ => {}
        }
        self.state = JobState::Cancelled;
        // A job that never ran created no files.
        Ok(if !keep && self.resume_next {
            Effect::RemovePartial
        } else {
            Effect::Nothing
        })
    }

    /// The daemon is stopping: a running job stops at a durable point and stays "running".
    pub fn shutdown(&mut self) -> Effect {
        if self.live.is_none() {
            return Effect::Nothing;
        }
        self.raise(Intent::Shutdown, JobCommand::Stop)
    }

    /// The engine's run ended: the outcome and what was asked of it decide the state.
    pub fn ended(&mut self, ended: Ended) -> Effect {
        let intent = self.live.take().unwrap_or(Intent::Run);
        let mut effect = Effect::Nothing;
        self.state = match (ended, intent) {
            (Ended::Completed, _) => JobState::Completed,
            // A cancel wins over a failure while stopping: the user asked for it. The run
            // may have stopped for an earlier pause before the cancel arrived, so the
            // partial files are removed here whatever the engine did.
            (_, Intent::Cancel { keep }) => {
                if !keep {
                    effect = Effect::RemovePartial;
                }
                JobState::Cancelled
            }
            (Ended::Failed(reason), _) => JobState::Failed(reason),
            (Ended::Cancelled, _) => JobState::Cancelled,
            (Ended::Stopped, Intent::Shutdown) => {
                self.restored_running = true;
                JobState::Running
            }
            (Ended::Stopped, Intent::Run | Intent::Pause) => JobState::Paused,
        };
        effect
    }

    fn refuse(&self, verb: &'static str) -> Refused {
        Refused {
            state: self.state.clone(),
            verb,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> JobState {
        JobState::Failed("x".into())
    }

    /// Every state a job can rest in (not running), each as a fresh lifecycle.
    fn resting() -> Vec<Lifecycle> {
        [
            JobState::Queued,
            JobState::Paused,
            JobState::Completed,
            failed(),
            JobState::Cancelled,
        ]
        .into_iter()
        .map(|s| Lifecycle::restored(s, true))
        .collect()
    }

    fn running() -> Lifecycle {
        let mut job = Lifecycle::queued(false);
        assert!(!job.start(), "a fresh job's first run does not adopt");
        job
    }

    /// What was last asked of a running job before its run ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Asked {
        Nothing,
        Pause,
        Cancel,
        CancelKeep,
        Shutdown,
    }

    fn ask(job: &mut Lifecycle, asked: Asked) {
        match asked {
            Asked::Nothing => {}
            Asked::Pause => assert!(job.pause().is_ok()),
            Asked::Cancel => assert!(job.cancel(false).is_ok()),
            Asked::CancelKeep => assert!(job.cancel(true).is_ok()),
            Asked::Shutdown => assert_eq!(job.shutdown(), Effect::Command(JobCommand::Stop)),
        }
    }

    /// Every (request, outcome) pair, written out: a completed run is completed whatever
    /// was asked; a cancel wins over everything else (removing the files unless kept); a
    /// failure is a failure; a stop is a pause, except at shutdown, where the job stays
    /// running to start first after the restart.
    #[test]
    fn a_run_ends_in_the_state_its_outcome_and_the_last_request_say() {
        use Effect::{Nothing, RemovePartial};
        use Ended::{Cancelled, Completed, Failed, Stopped};
        let x = || "x".to_string();
        let table: Vec<(Asked, Ended, JobState, Effect)> = vec![
            (Asked::Nothing, Completed, JobState::Completed, Nothing),
            (Asked::Nothing, Failed(x()), failed(), Nothing),
            (Asked::Nothing, Stopped, JobState::Paused, Nothing),
            (Asked::Nothing, Cancelled, JobState::Cancelled, Nothing),
            (Asked::Pause, Completed, JobState::Completed, Nothing),
            (Asked::Pause, Failed(x()), failed(), Nothing),
            (Asked::Pause, Stopped, JobState::Paused, Nothing),
            (Asked::Pause, Cancelled, JobState::Cancelled, Nothing),
            (Asked::Cancel, Completed, JobState::Completed, Nothing),
            (
                Asked::Cancel,
                Failed(x()),
                JobState::Cancelled,
                RemovePartial,
            ),
            (Asked::Cancel, Stopped, JobState::Cancelled, RemovePartial),
            (Asked::Cancel, Cancelled, JobState::Cancelled, RemovePartial),
            (Asked::CancelKeep, Completed, JobState::Completed, Nothing),
            (Asked::CancelKeep, Failed(x()), JobState::Cancelled, Nothing),
            (Asked::CancelKeep, Stopped, JobState::Cancelled, Nothing),
            (Asked::CancelKeep, Cancelled, JobState::Cancelled, Nothing),
            (Asked::Shutdown, Completed, JobState::Completed, Nothing),
            (Asked::Shutdown, Failed(x()), failed(), Nothing),
            (Asked::Shutdown, Stopped, JobState::Running, Nothing),
            (Asked::Shutdown, Cancelled, JobState::Cancelled, Nothing),
        ];
        // Exhaustive: every request with every outcome, once.
        let asked = [
            Asked::Nothing,
            Asked::Pause,
            Asked::Cancel,
            Asked::CancelKeep,
            Asked::Shutdown,
        ];
        let outcomes = [Completed, Failed(x()), Stopped, Cancelled];
        for a in asked {
            for o in &outcomes {
                let rows = table
                    .iter()
                    .filter(|(ta, to, ..)| *ta == a && to == o)
                    .count();
                assert_eq!(rows, 1, "{a:?} then {o:?}");
            }
        }
        for (asked, ended, want, want_effect) in table {
            let label = format!("{asked:?} then {ended:?}");
            let mut job = running();
            ask(&mut job, asked);
            let effect = job.ended(ended);
            let got = (job.state(Activity::Transferring), effect);
            assert_eq!(got, (want, want_effect), "{label}");
            assert!(!job.is_live(), "{label}");
        }
    }

    #[test]
    fn requests_only_raise_what_a_running_job_was_asked() {
        let mut job = running();
        job.cancel(true).unwrap();
        // A pause in flight after the cancel does not undo it; shutdown neither.
        job.pause().unwrap();
        job.shutdown();
        assert_eq!(job.persisted(), JobState::Cancelled);
        // A second cancel may change its mind about keeping the files.
        job.cancel(false).unwrap();
        assert_eq!(job.ended(Ended::Stopped), Effect::RemovePartial);

        let mut job = running();
        job.pause().unwrap();
        job.shutdown();
        assert_eq!(
            job.persisted(),
            JobState::Paused,
            "paused through a restart"
        );
        assert_eq!(job.ended(Ended::Stopped), Effect::Nothing);
        assert_eq!(job.state(Activity::Starting), JobState::Paused);
    }

    #[test]
    fn a_running_job_is_saved_as_running_and_shown_as_the_engine_reports() {
        let mut job = running();
        assert_eq!(job.persisted(), JobState::Running);
        assert_eq!(job.state(Activity::Waiting), JobState::Waiting);
        for a in [
            Activity::Starting,
            Activity::Transferring,
            Activity::Finishing,
        ] {
            assert_eq!(job.state(a), JobState::Running);
        }
        assert!(job.is_live() && job.queue_rank().is_none());
        assert!(job.resumes(), "every start after the first adopts");
        assert_eq!(
            job.resume(),
            Ok(false),
            "resuming a running job changes nothing"
        );
        assert_eq!(job.pause(), Ok(Effect::Command(JobCommand::Stop)));
        assert_eq!(job.persisted(), JobState::Paused);
        assert!(job.resume().is_err(), "not while it is still pausing");
    }

    #[test]
    fn operator_requests_on_resting_jobs() {
        for job in resting() {
            let s = job.state(Activity::Starting);
            let mut p = job.clone();
            let paused = p.pause();
            let pausable = matches!(s, JobState::Queued | JobState::Paused);
            assert_eq!(paused.is_ok(), pausable, "pause {s:?}");
            if pausable {
                assert_eq!(p.state(Activity::Starting), JobState::Paused);
            }
            let mut r = job.clone();
            let resumed = r.resume();
            let stopped = matches!(s, JobState::Paused | JobState::Failed(_));
            match resumed {
                Ok(changed) => {
                    assert_eq!(changed, stopped, "resume {s:?}");
                    assert_eq!(r.queue_rank(), Some(1), "resume {s:?}");
                }
                Err(_) => assert!(
                    matches!(s, JobState::Completed | JobState::Cancelled),
                    "resume {s:?}"
                ),
            }
            let mut c = job.clone();
            let cancelled = c.cancel(false);
            match cancelled {
                Ok(effect) => {
                    assert_ne!(s, JobState::Completed, "cancel {s:?}");
                    let want = if s == JobState::Cancelled {
                        Effect::Nothing
                    } else {
                        Effect::RemovePartial
                    };
                    assert_eq!(effect, want, "cancel {s:?}");
                    assert_eq!(c.state(Activity::Starting), JobState::Cancelled);
                }
                Err(refused) => {
                    assert_eq!(s, JobState::Completed, "cancel {s:?}");
                    assert_eq!(
                        refused.to_string(),
                        "job is completed and cannot be cancelled"
                    );
                }
            }
            assert_eq!(job.is_finished(), s.is_terminal());
            assert_eq!(
                job.owns_partial_files(),
                !matches!(s, JobState::Completed | JobState::Cancelled)
            );
        }
    }

    #[test]
    fn cancelling_a_job_that_never_ran_removes_nothing() {
        let mut job = Lifecycle::queued(false);
        assert_eq!(job.cancel(false), Ok(Effect::Nothing));
        // With -r it may adopt someone's files on its first start: still nothing of its own.
        let mut resumed = Lifecycle::queued(true);
        assert_eq!(resumed.cancel(true), Ok(Effect::Nothing));
    }

    #[test]
    fn restore_requeues_what_ran_ahead_of_what_was_queued() {
        for saved in [JobState::Running, JobState::Waiting] {
            let job = Lifecycle::restored(saved, false);
            assert_eq!(job.state(Activity::Starting), JobState::Queued);
            assert_eq!(job.queue_rank(), Some(0));
            assert!(job.resumes());
        }
        let queued = Lifecycle::restored(JobState::Queued, false);
        assert_eq!(queued.queue_rank(), Some(1));
        assert!(!queued.resumes());
        assert!(Lifecycle::restored(JobState::Queued, true).resumes());
        for saved in [JobState::Paused, failed()] {
            assert!(Lifecycle::restored(saved, false).resumes());
        }
        // A job stopped by shutdown restores as running, so first in line again.
        let mut job = running();
        job.shutdown();
        job.ended(Ended::Stopped);
        let back = Lifecycle::restored(job.persisted(), job.resumes());
        assert_eq!(back.queue_rank(), Some(0));
        // Starting clears the priority.
        let mut started = back;
        assert!(started.start());
        started.ended(Ended::Failed("x".into()));
        assert_eq!(started.resume(), Ok(true));
        assert_eq!(started.queue_rank(), Some(1));
    }
}
