//! Cross-checking mirrors while the download runs: in a job of HTTP mirrors alone no digest
//! table proves a segment as it arrives, so a lying mirror would be found only by the
//! whole-file check at the end (and `repair`), or never under `--no-verify`. Instead, each
//! source's first delivered segment, and then one in `every`, is fetched once more from
//! other mirrors (referees, asked one after the other, see `repair::rule`) and compared.
//! Two sources that agree against a third convict it: the job excludes it at once, and every
//! segment it delivered is fetched again from the others before the file is finished.
//!
//! Samples run beside the job (a `JoinSet`, aborted with it), at most [`MAX_RUNNING`] at
//! once; a sample due while that many run is skipped, and the next delivery is sampled
//! instead. The cost is one segment per source plus one in `every` from a referee's link.
//! A sample that takes longer than `CROSS_CHECK_SAMPLE_TIMEOUT` says nothing (the job waits
//! for running samples before it finishes, so a trickling referee must not hold it).

use std::collections::HashMap;

use arsnet_proto::limits::CROSS_CHECK_SAMPLE_TIMEOUT;
use arsnet_proto::Digest;
use tokio::task::JoinSet;

use super::repair::{rule, Referees, Ruling};

/// Samples that may run at once per job: each holds a segment buffer and a referee's
/// connection.
pub(crate) const MAX_RUNNING: usize = 2;

/// What the referees said of one sampled segment.
#[derive(Debug)]
pub(crate) struct Finding {
    pub source: usize,
    pub segment: u64,
    pub ruling: Ruling,
}

/// The job's cross-checks: which deliveries to sample, and the samples running.
pub(crate) struct CrossCheck {
    /// One delivered segment in `every` per source is sampled (0: none).
    every: u64,
    /// Segments each source delivered while a sample could start.
    delivered: HashMap<usize, u64>,
    running: JoinSet<Finding>,
}

impl CrossCheck {
    pub(crate) fn new(every: u64) -> Self {
        CrossCheck {
            every,
            delivered: HashMap::new(),
            running: JoinSet::new(),
        }
    }

    /// `source` delivered a segment: whether to sample it (its first, then one in `every`).
    pub(crate) fn wants(&mut self, source: usize) -> bool {
        if self.every == 0 || self.running.len() >= MAX_RUNNING {
            return false;
        }
        let n = self.delivered.entry(source).or_default();
        let pick = *n % self.every == 0;
        *n += 1;
        pick
    }

    /// Asks `referees` whether `segment`, as `source` delivered it (`digest`), is right.
    pub(crate) fn start(
        &mut self,
        referees: Referees,
        source: usize,
        segment: u64,
        digest: Digest,
    ) {
        self.running.spawn(async move {
            let ruling = tokio::time::timeout(
                CROSS_CHECK_SAMPLE_TIMEOUT,
                rule(&referees, Some(source), segment, digest),
            )
            .await
            .unwrap_or(Ruling::Unheard);
            Finding {
                source,
                segment,
                ruling,
            }
        });
    }

    /// Drops the samples still running (the job is finishing and its end check decides).
    pub(crate) fn stop(&mut self) {
        self.running.abort_all();
    }

    /// Whether samples are running (the job waits for them before it finishes).
    pub(crate) fn busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// The next sample's finding; pending forever while none runs (for `select!`).
    pub(crate) async fn next(&mut self) -> Option<Finding> {
        match self.running.join_next().await {
            Some(Ok(finding)) => Some(finding),
            // A sample that panicked or was aborted says nothing.
            Some(Err(_)) => None,
            None => std::future::pending().await,
        }
    }
}

/// Whom `finding` convicts, and why; `None` when nobody is to blame.
pub(crate) fn culprit(
    finding: &Finding,
    name: impl Fn(usize) -> String,
) -> Option<(usize, String)> {
    let segment = finding.segment;
    match finding.ruling {
        Ruling::Contradicted { by: (a, b) } => Some((
            finding.source,
            format!(
                "cross-check: its segment {segment} differs from what {} and {} serve",
                name(a),
                name(b)
            ),
        )),
        Ruling::RefereeLied {
            referee,
            confirmed_by,
        } => Some((
            referee,
            format!(
                "cross-check: its segment {segment} differs from what {} delivered and {} serves",
                name(finding.source),
                name(confirmed_by)
            ),
        )),
        Ruling::Agreed | Ruling::Unsettled { .. } | Ruling::Unheard => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sources_first_segment_then_one_in_every_is_sampled() {
        let mut check = CrossCheck::new(4);
        let picked: Vec<bool> = (0..9).map(|_| check.wants(1)).collect();
        assert_eq!(
            picked,
            [true, false, false, false, true, false, false, false, true]
        );
        // Another source's first delivery is sampled too.
        assert!(check.wants(2));
        assert!(!CrossCheck::new(0).wants(1), "0 turns sampling off");
    }

    #[test]
    fn two_against_one_convicts_the_one() {
        let name = |i: usize| format!("m{i}");
        let finding = |ruling| Finding {
            source: 1,
            segment: 7,
            ruling,
        };
        let (who, why) = culprit(&finding(Ruling::Contradicted { by: (2, 3) }), name).unwrap();
        assert_eq!(who, 1);
        assert!(why.contains("segment 7") && why.contains("m2") && why.contains("m3"));
        let lied = Ruling::RefereeLied {
            referee: 2,
            confirmed_by: 3,
        };
        assert_eq!(culprit(&finding(lied), name).map(|c| c.0), Some(2));
        for ruling in [
            Ruling::Agreed,
            Ruling::Unsettled { against: 2 },
            Ruling::Unheard,
        ] {
            assert_eq!(culprit(&finding(ruling), name), None);
        }
    }
}
