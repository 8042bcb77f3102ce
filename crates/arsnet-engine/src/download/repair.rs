//! Repair by provenance: when a job of HTTP mirrors alone finishes with a dump that is not
//! the pinned content, find the mirror that sent the bad bytes and fetch again what it sent.
//!
//! The job knows which source delivered each segment (its *provenance*) and, from the end
//! check, each segment's BLAKE3 digest as it is in the dump. For every source that delivered
//! segments (and, as one more suspect, the segments adopted from a journal, whose source a
//! restart forgot), a few of its segments are fetched again from other mirrors — referees —
//! and their digests compared with the dump's. A referee that agrees clears the sample; two
//! referees that agree with each other against the dump convict the suspect, and every
//! segment it delivered is fetched again from the others. With fewer than two referees a
//! disagreement cannot say who lies, and the job fails naming both. Each round samples twice
//! as many segments per suspect as the last, so a mirror that lies rarely is found too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arsnet_proto::manifest::digest_segment;
use arsnet_proto::{Digest, Manifest, SourceAddr};

use super::buffers::BufferPool;
use super::end_check::Mismatch;
use super::source::fetch_one;

/// Rounds of repair a job tries before it fails: samples per suspect double each round.
pub(crate) const MAX_ROUNDS: u32 = 4;
/// Segments sampled per suspect in the first round.
const FIRST_SAMPLES: usize = 2;

/// Who delivered a segment: a source of the job, or a journal of an earlier run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Origin {
    Source(usize),
    Journal,
}

/// What the referees found.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Sources convicted, with the reason they are blamed.
    pub culprits: Vec<(usize, String)>,
    /// Segments to fetch again (everything the culprits, or a convicted journal, delivered).
    pub refetch: Vec<u64>,
    /// Why nothing could be convicted, when nothing was.
    pub undecided: Option<String>,
}

/// What the repair (and the cross-check while downloading) needs to ask referees. Owned, so
/// that a cross-check can run beside the job.
#[derive(Clone)]
pub(crate) struct Referees {
    pub client: reqwest::Client,
    pub sources: Arc<[SourceAddr]>,
    /// The order referees are asked in: the fastest first, so a sample's answer waits on
    /// the link that delivers it soonest.
    pub order: Vec<usize>,
    /// Longest one referee may take to serve a segment before the next one is asked (the
    /// job's stall timeout): a stalled mirror must not hold a repair or a cross-check.
    pub ask_timeout: std::time::Duration,
    /// Sources already blamed: never asked.
    pub excluded: BTreeSet<usize>,
    pub manifest: Arc<Manifest>,
    pub buffers: BufferPool,
}

/// What referees say of one segment that `suspect` delivered with digest `claimed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ruling {
    /// A referee serves the same bytes.
    Agreed,
    /// Two referees serve the same other bytes: the suspect lied.
    Contradicted { by: (usize, usize) },
    /// A referee served other bytes, and a later one the suspect's: that referee lied.
    RefereeLied { referee: usize, confirmed_by: usize },
    /// Referees disagreed with the suspect, and nobody could settle it.
    Unsettled { against: usize },
    /// No referee could answer.
    Unheard,
}

/// Asks the referees (every source but `suspect` and the excluded) for `segment`, one after
/// the other, until they settle whether `claimed` is right.
pub(crate) async fn rule(
    referees: &Referees,
    suspect: Option<usize>,
    segment: u64,
    claimed: Digest,
) -> Ruling {
    let mut against: Vec<(usize, Digest)> = Vec::new();
    for &referee in referees
        .order
        .iter()
        .filter(|&&r| Some(r) != suspect && !referees.excluded.contains(&r))
    {
        let Some(digest) = ask(referees, referee, segment).await else {
            continue;
        };
        if digest == claimed {
            return match against.first() {
                Some(&(liar, _)) => Ruling::RefereeLied {
                    referee: liar,
                    confirmed_by: referee,
                },
                None => Ruling::Agreed,
            };
        }
        if let Some(&(first, _)) = against.iter().find(|(_, d)| *d == digest) {
            return Ruling::Contradicted {
                by: (first, referee),
            };
        }
        against.push((referee, digest));
    }
    match against.first() {
        Some(&(r, _)) => Ruling::Unsettled { against: r },
        None => Ruling::Unheard,
    }
}

/// Samples every suspect's segments (`round` 0, 1, … asks more each time) and convicts
/// those whose bytes two referees contradict.
pub(crate) async fn find_culprits(
    mismatch: &Mismatch,
    provenance: &HashMap<u64, usize>,
    round: u32,
    referees: &Referees,
) -> Verdict {
    let samples = FIRST_SAMPLES << round.min(16);
    let mut by_origin: BTreeMap<Origin, Vec<u64>> = BTreeMap::new();
    for segment in 0..mismatch.segments.len() as u64 {
        let origin = provenance
            .get(&segment)
            .map_or(Origin::Journal, |&s| Origin::Source(s));
        by_origin.entry(origin).or_default().push(segment);
    }
    let mut verdict = Verdict::default();
    for (origin, segments) in &by_origin {
        let suspect = match origin {
            Origin::Source(s) => Some(*s),
            Origin::Journal => None,
        };
        match judge(mismatch, suspect, &sample(segments, samples), referees).await {
            Judgement::Cleared => {}
            Judgement::Convicted(reason) => {
                if let Some(s) = suspect {
                    verdict.culprits.push((s, reason));
                }
                verdict.refetch.extend(segments);
            }
            Judgement::Undecided(why) => verdict.undecided = Some(why),
        }
    }
    verdict
}

enum Judgement {
    Cleared,
    Convicted(String),
    Undecided(String),
}

/// Compares each sampled segment of `suspect` (the dump's bytes) with what referees serve.
async fn judge(
    mismatch: &Mismatch,
    suspect: Option<usize>,
    samples: &[u64],
    referees: &Referees,
) -> Judgement {
    let who = suspect.map_or("the journal".to_string(), |s| {
        referees.sources[s].to_string()
    });
    let has_referee =
        (0..referees.sources.len()).any(|r| Some(r) != suspect && !referees.excluded.contains(&r));
    if !has_referee {
        return Judgement::Undecided(format!(
            "every segment came from {who}: no other mirror to compare with"
        ));
    }
    let mut undecided = None;
    for &segment in samples {
        let Some(&in_dump) = mismatch.segments.get(segment as usize) else {
            continue;
        };
        match rule(referees, suspect, segment, in_dump).await {
            Ruling::Contradicted { by: (a, b) } => {
                return Judgement::Convicted(format!(
                    "its segment {segment} differs from what {} and {} serve, and the whole file \
                     failed its {} check",
                    referees.sources[a], referees.sources[b], mismatch.algorithm
                ));
            }
            Ruling::Unsettled { against } => {
                undecided = Some(format!(
                    "segment {segment} from {who} differs from {}, and no third mirror could say \
                     which one is right",
                    referees.sources[against]
                ));
            }
            // A lying referee is the cross-check's to catch; here the sample stands.
            Ruling::Agreed | Ruling::RefereeLied { .. } | Ruling::Unheard => {}
        }
    }
    match undecided {
        Some(why) => Judgement::Undecided(why),
        None => Judgement::Cleared,
    }
}

/// The digest of `segment` as `referee` serves it; `None` if it could not say.
async fn ask(referees: &Referees, referee: usize, segment: u64) -> Option<Digest> {
    let addr = referees.sources.get(referee)?;
    let m = &referees.manifest;
    let fetch = fetch_one(addr, &referees.client, m, segment, &referees.buffers);
    let data = tokio::time::timeout(referees.ask_timeout, fetch)
        .await
        .ok()??
        .ok()?;
    let digest = digest_segment(m.size, m.segment_size, segment, &data);
    referees.buffers.give(data);
    Some(digest)
}

/// Up to `n` of `segments`, spread evenly over them (first and last included).
fn sample(segments: &[u64], n: usize) -> Vec<u64> {
    if segments.len() <= n {
        return segments.to_vec();
    }
    let step = (segments.len() - 1) as f64 / (n.max(2) - 1) as f64;
    let mut picked: Vec<u64> = (0..n.max(2))
        .map(|i| segments[((i as f64 * step).round() as usize).min(segments.len() - 1)])
        .collect();
    picked.dedup();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_spread_over_a_suspects_segments() {
        assert_eq!(sample(&[4, 9], 2), vec![4, 9]);
        assert_eq!(sample(&[1, 2, 3, 4, 5], 2), vec![1, 5]);
        assert_eq!(sample(&[0, 1, 2, 3, 4, 5, 6, 7, 8], 3), vec![0, 4, 8]);
        assert_eq!(sample(&(0..100).collect::<Vec<_>>(), 4).len(), 4);
        assert!(sample(&[], 2).is_empty());
    }
}
