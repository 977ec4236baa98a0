//! The write path through the gateway: client writes wait in one bounded
//! queue, and a few upstream "lanes" carry them to nodes as combined
//! batches (`POST /batch`, postcard, over the pooled keep-alive
//! connections), the rules of which are in `combine`.
//!
//! A lane takes everything waiting (up to a batch), sends it to the next
//! node of the rotation, answers every client of the batch, and goes on
//! while writes wait; so while a batch is in flight, new writes gather for
//! the next one, and a busy gateway sends few, large upstream requests.
//! A write that finds no lane at work starts one at once (it never waits
//! for a timer); while one is at work, another starts only once a full
//! batch waits, or once the batch in flight has taken longer than
//! [`SLOW_BATCH`] ([`starts_lane`]): every batch costs the cluster a commit
//! (an fsync, gossip to every peer, a delta on every node's stream), so
//! one batch filling while another is in flight is cheaper than two
//! half-full ones, on a machine short of CPU above all; and a node that
//! hangs without failing holds the writes behind it for `SLOW_BATCH`, not
//! for the request timeout (the next lane goes to the next node).
//!
//! Under load a lane that has just answered a batch *gathers* before its
//! next one ([`gather_target`]): it waits until as many writes wait as it
//! answered, or [`GATHER_WAIT`]. Clients that write again as soon as they
//! are answered come back within a hop; without the wait, the lane sent
//! the one or two writes already there, and the rest waited a whole round
//! trip behind that batch (one batch in six carried a single write at 64
//! clients).
//!
//! Safety is the proxy's: a batch moves to the next node only when it
//! certainly never left (`failover`); once it may have reached a node,
//! every client of the batch gets 502/504 and nothing is resent. Writes
//! are combined only with writes carrying the same `Authorization`
//! header, which goes upstream with them, so a node with a tokens file
//! judges every client's token exactly as it would judge a single write;
//! and only with writes of the same `?w=`, which the batch carries
//! (`POST /batch?w=…`), so each client waits for the replicas it asked
//! for and is told how many held its write (`x-tally-replicas`).
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tally_protocol::batch::{
    BatchAnswer, Direction, BATCH_CONTENT_TYPE, BATCH_PATH, MAX_BATCH_ITEMS, REPLICAS_HEADER,
};
use tally_protocol::probes;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::combine::{self, Batch, Outcome, Write};
use crate::error::{self, ApiError};
use crate::failover::{self, Failure, Next, RequestKind};
use crate::node_table;
use crate::state::Shared;

/// Client writes waiting for a lane, at most; beyond, 503 at once (the
/// queue's memory is bounded whatever clients do).
pub const MAX_WAITING: usize = 16_384;

/// Writes waiting that start another lane while one is at work: a full
/// batch's worth (a batch holds at most this many items).
pub const WAITING_FOR_ANOTHER_LANE: usize = MAX_BATCH_ITEMS;

/// A batch in flight for longer than this (a round trip takes a few ms)
/// lets the writes waiting behind it start another lane.
pub const SLOW_BATCH: Duration = Duration::from_millis(100);

/// Under load, the longest a lane waits for the clients of the batch it
/// just answered (tokio's timer rounds it up to its next millisecond tick).
pub const GATHER_WAIT: Duration = Duration::from_millis(1);

/// A batch answered with fewer writes than this was light load: the next
/// batch goes at once, so a lone write never waits.
pub const GATHER_FROM: usize = 4;

/// How many waiting writes a lane that has just answered `answered`
/// writes gathers before its next batch (at most [`GATHER_WAIT`]): as
/// many as it answered, whose clients, if they write again at once, are on
/// their way; none under light load.
fn gather_target(answered: usize) -> Option<usize> {
    (answered >= GATHER_FROM).then_some(answered.min(MAX_WAITING))
}

/// Whether a lane starts now, with `busy` lanes at work (at most `most`)
/// and `waiting` writes queued: always when none is at work, so a write
/// never waits for a timer; otherwise only once a full batch waits, so
/// under load one batch fills while another is in flight instead of many
/// small ones each costing the cluster a commit; or, when a lane's batch
/// is `slow`, for any write waiting (its node may hang).
fn starts_lane(busy: usize, waiting: usize, most: usize, slow: bool) -> bool {
    busy == 0 || (busy < most && (waiting >= WAITING_FOR_ANOTHER_LANE || (slow && waiting > 0)))
}

/// A durable write, as its client is told.
#[derive(Debug, Clone)]
pub struct Done {
    pub value: i128,
    /// The node that made it durable (shared by every client of the batch).
    pub node: Arc<str>,
    /// Replicas holding it (the node's `x-tally-replicas`; 1 by default).
    pub replicas: usize,
}

type Reply = oneshot::Sender<Result<Done, ApiError>>;

struct Waiting {
    authorization: Option<HeaderValue>,
    /// The write's `?w=` (`None`: 1).
    level: Option<String>,
    write: Write<Reply>,
}

/// The queue and the lanes at work on it.
#[derive(Default)]
pub struct Combiner {
    state: Mutex<Queue>,
    /// Woken as writes arrive while some lane gathers.
    arrived: Notify,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    lanes_busy: usize,
    /// Lanes gathering writes for their next batch.
    gathering: usize,
}

impl Combiner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `target` writes wait, or `longest` has passed.
    async fn gather(&self, target: usize, longest: Duration) {
        let deadline = Instant::now() + longest;
        self.queue().gathering += 1;
        let _done = Gathered(self);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the check, so no arrival slips between them.
            arrived.as_mut().enable();
            if self.queue().waiting.len() >= target {
                break;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                break;
            }
        }
    }
}

/// Ends a lane's gathering however it ends (a lane dropped mid-wait too).
struct Gathered<'a>(&'a Combiner);

impl Drop for Gathered<'_> {
    fn drop(&mut self) {
        self.0.queue().gathering -= 1;
    }
}

/// Writes `amount` to `counter` through a combined batch; answers once the
/// batch's node made it durable (or with the error every client of the
/// batch gets).
pub async fn submit(
    shared: &Arc<Shared>,
    authorization: Option<HeaderValue>,
    level: Option<String>,
    counter: String,
    direction: Direction,
    amount: u64,
) -> Result<Done, ApiError> {
    let lanes = lanes_wanted(shared);
    let (reply, answer) = oneshot::channel();
    let write = Write {
        counter,
        direction,
        amount,
        ticket: reply,
    };
    let (start_lane, someone_gathers) = {
        let mut queue = shared.combiner.queue();
        if queue.waiting.len() >= MAX_WAITING {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many writes waiting in the gateway (at most {MAX_WAITING}); retry"),
            ));
        }
        queue.waiting.push_back(Waiting {
            authorization,
            level,
            write,
        });
        let start = starts_lane(queue.lanes_busy, queue.waiting.len(), lanes, false);
        if start {
            queue.lanes_busy += 1;
        }
        (start, queue.gathering > 0)
    };
    if someone_gathers {
        shared.combiner.arrived.notify_waiters();
    }
    if start_lane {
        spawn_lane(shared);
    }
    answer.await.unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the gateway lost this write's answer; it may or may not have been applied",
        ))
    })
}

/// Most lanes (batches in flight at once): `lanes_per_node` per healthy node.
fn lanes_wanted(shared: &Shared) -> usize {
    let healthy = shared.balancer().healthy_count().max(1);
    healthy.saturating_mul(shared.config.lanes_per_node.max(1))
}

/// A task of its own: a client that goes away must not cancel a batch
/// carrying other clients' writes. (Its slot in `lanes_busy` is taken.)
fn spawn_lane(shared: &Arc<Shared>) {
    tokio::spawn(run_lane(Arc::clone(shared)));
}

/// Sends batches while writes wait, then retires.
async fn run_lane(shared: Arc<Shared>) {
    let mut lane = Lane {
        shared,
        retired: false,
    };
    let mut answered = 0;
    loop {
        if let Some(target) = gather_target(answered) {
            lane.shared.combiner.gather(target, GATHER_WAIT).await;
        }
        let lanes = lanes_wanted(&lane.shared);
        let (next, another) = {
            let mut queue = lane.shared.combiner.queue();
            match take_batch(&mut queue.waiting) {
                Some(next) => {
                    // What a batch could not take (other groups, more
                    // counters than a batch holds) may be a full batch.
                    let another = starts_lane(queue.lanes_busy, queue.waiting.len(), lanes, false);
                    if another {
                        queue.lanes_busy += 1;
                    }
                    (next, another)
                }
                None => {
                    // Under the lock that `submit` checks: a write queued
                    // after this sees the lane gone and starts another.
                    queue.lanes_busy -= 1;
                    lane.retired = true;
                    return;
                }
            }
        };
        if another {
            spawn_lane(&lane.shared);
        }
        let (group, batch) = next;
        answered = batch.writes();
        let sending = send(&lane.shared, group, batch);
        tokio::pin!(sending);
        if tokio::time::timeout(SLOW_BATCH, &mut sending)
            .await
            .is_err()
        {
            // Slow: its node may hang. What waits behind it goes on by
            // another lane (to the next node), not after the timeout.
            let another = {
                let mut queue = lane.shared.combiner.queue();
                let start = starts_lane(queue.lanes_busy, queue.waiting.len(), lanes, true);
                if start {
                    queue.lanes_busy += 1;
                }
                start
            };
            if another {
                spawn_lane(&lane.shared);
            }
            sending.await;
        }
    }
}

/// A running lane; should its task end any other way than by retiring
/// (a panic, the runtime shutting down), its slot is given back, so the
/// gateway never runs out of lanes.
struct Lane {
    shared: Arc<Shared>,
    retired: bool,
}

impl Drop for Lane {
    fn drop(&mut self) {
        if !self.retired {
            let mut queue = self.shared.combiner.queue();
            queue.lanes_busy = queue.lanes_busy.saturating_sub(1);
        }
    }
}

/// What the writes of one batch share: the `Authorization` header and `?w=`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    authorization: Option<HeaderValue>,
    level: Option<String>,
}

/// The next batch: the oldest write and every waiting write of its
/// [`Group`] that fits, in arrival order; the rest keep their places.
fn take_batch(waiting: &mut VecDeque<Waiting>) -> Option<(Group, Batch<Reply>)> {
    let front = waiting.front()?;
    let group = Group {
        authorization: front.authorization.clone(),
        level: front.level.clone(),
    };
    let mut batch = Batch::default();
    let mut kept = VecDeque::new();
    while let Some(next) = waiting.pop_front() {
        if next.authorization != group.authorization || next.level != group.level {
            kept.push_back(next);
            continue;
        }
        // An empty batch takes any write, so the oldest always goes.
        if let Err(write) = batch.push(next.write) {
            kept.push_back(Waiting {
                authorization: next.authorization,
                level: next.level,
                write,
            });
        }
    }
    *waiting = kept;
    Some((group, batch))
}

/// Sends one batch, failing over only while it certainly never left, and
/// answers its clients.
async fn send(shared: &Arc<Shared>, group: Group, batch: Batch<Reply>) {
    let body = Bytes::from(crdt_core::wire::encode(&batch.request()));
    let order = shared.balancer().rotation();
    let mut failed = error::no_healthy_node();
    for addr in order {
        let sent = tokio::time::timeout(
            shared.config.request_timeout,
            post_batch(shared, &addr, &group, body.clone()),
        )
        .await
        .unwrap_or(Err(Failure::TimedOut));
        let failure = match sent {
            Ok((reply, draining)) => {
                if draining {
                    tracing::info!(node = %addr, "node is draining before it stops; it leaves the rotation");
                    node_table::mark_unhealthy(shared, &addr);
                }
                answer(shared, batch, reply);
                return;
            }
            Err(failure) => failure,
        };
        tracing::warn!(node = %addr, "batch write failed; node leaves the rotation");
        node_table::mark_unhealthy(shared, &addr);
        let next = failover::after_failure(RequestKind::Write, &failure);
        failed = failure.into_api_error(&addr, shared.config.request_timeout);
        if next == Next::Stop {
            break;
        }
    }
    for combined in batch.into_items() {
        for reply in combined.tickets {
            let _ = reply.send(Err(failed.clone()));
        }
    }
}

/// What a node said to a batch.
enum NodeReply {
    /// Per-item results, and how many replicas hold them.
    Answer(BatchAnswer, usize),
    /// The whole batch refused (401/403, 400, 503, …): nothing applied;
    /// every client gets this status and message.
    Refused(ApiError),
}

/// Answers every client of `batch` from the node's reply; records applied
/// writes for read-your-writes first, so a client that reads right after
/// its answer waits for its write.
fn answer(shared: &Shared, batch: Batch<Reply>, reply: NodeReply) {
    let (answer, replicas) = match reply {
        NodeReply::Answer(answer, replicas) => (answer, replicas),
        NodeReply::Refused(error) => {
            for combined in batch.into_items() {
                for reply in combined.tickets {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            return;
        }
    };
    let answered = combine::answers(batch.into_items(), answer.results);
    {
        let mut replicas = shared.replicas();
        for (item, _, outcome) in &answered {
            if let Outcome::Applied { seq, .. } = outcome {
                replicas.acknowledged(&item.counter, &answer.actor, *seq);
            }
        }
    }
    let node: Arc<str> = Arc::from(answer.node.as_str());
    for (_, tickets, outcome) in answered {
        let result = match outcome {
            Outcome::Applied { value, .. } => Ok(Done {
                value,
                node: Arc::clone(&node),
                replicas,
            }),
            Outcome::Refused { status, error } => Err(ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                error,
            )),
            Outcome::Unknown => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "node {} answered the batch without this write; it may or may not have been applied",
                    answer.node
                ),
            )),
        };
        for reply in tickets {
            let _ = reply.send(result.clone());
        }
    }
}

/// `POST /batch` to the node at `addr`: its reply, and whether it said it
/// is draining.
async fn post_batch(
    shared: &Shared,
    addr: &str,
    group: &Group,
    body: Bytes,
) -> Result<(NodeReply, bool), Failure> {
    // A bad address in the node table means the request cannot leave.
    let not_sent = |error: axum::http::Error| Failure::NotSent(error.to_string());
    let authority = Authority::try_from(addr).map_err(|e| not_sent(e.into()))?;
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(match &group.level {
            Some(level) => format!("{BATCH_PATH}?w={level}"),
            None => BATCH_PATH.to_owned(),
        })
        .build()
        .map_err(not_sent)?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, BATCH_CONTENT_TYPE);
    if let Some(authorization) = &group.authorization {
        request = request.header(AUTHORIZATION, authorization.clone());
    }
    let request = request.body(Full::new(body)).map_err(not_sent)?;
    let answer = shared
        .proxy
        .request(request)
        .await
        .map_err(crate::proxy::classify)?;
    let (head, body) = answer.into_parts();
    let draining = head.headers.contains_key(probes::DRAINING_HEADER);
    let replicas = (head.headers.get(REPLICAS_HEADER))
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .unwrap_or(1);
    let body = Limited::new(body, shared.config.max_node_answer)
        .collect()
        .await
        .map_err(|error| Failure::Broken(error.to_string()))?
        .to_bytes();
    if !head.status.is_success() {
        // The node refused the batch as a whole and applied none of it;
        // or (504, with `?w=`) applied it but could not say that enough
        // replicas hold it: the node's message says the outcome is unknown.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| json["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Ok((
            NodeReply::Refused(ApiError::new(head.status, message)),
            draining,
        ));
    }
    // An answer we cannot read may follow an applied batch: unknown, never resent.
    let answer = crdt_core::wire::decode::<BatchAnswer>(&body)
        .map_err(|error| Failure::Broken(format!("unreadable batch answer: {error}")))?;
    Ok((NodeReply::Answer(answer, replicas), draining))
}

#[cfg(test)]
mod tests {
    use super::*;
    use WAITING_FOR_ANOTHER_LANE as FULL;

    #[test]
    fn a_lane_gathers_only_after_a_batch_of_several_writes() {
        for light in 0..GATHER_FROM {
            assert_eq!(gather_target(light), None, "{light} writes");
        }
        assert_eq!(gather_target(GATHER_FROM), Some(GATHER_FROM));
        assert_eq!(gather_target(40), Some(40));
        assert_eq!(gather_target(MAX_WAITING + 1), Some(MAX_WAITING));
    }

    fn queue_writes(combiner: &Combiner, count: usize) {
        let mut queue = combiner.queue();
        for _ in 0..count {
            let (ticket, _) = oneshot::channel();
            queue.waiting.push_back(Waiting {
                authorization: None,
                level: None,
                write: Write {
                    counter: "c".to_owned(),
                    direction: Direction::Increment,
                    amount: 1,
                    ticket,
                },
            });
        }
    }

    #[tokio::test]
    async fn gathering_ends_once_enough_writes_wait() {
        let combiner = Arc::new(Combiner::default());
        let gathering = tokio::spawn({
            let combiner = Arc::clone(&combiner);
            async move { combiner.gather(3, Duration::from_secs(600)).await }
        });
        while combiner.queue().gathering == 0 {
            tokio::task::yield_now().await;
        }
        queue_writes(&combiner, 2);
        combiner.arrived.notify_waiters();
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!gathering.is_finished(), "2 of 3 writes ended it");
        queue_writes(&combiner, 1);
        combiner.arrived.notify_waiters();
        tokio::time::timeout(Duration::from_secs(60), gathering)
            .await
            .expect("the third write ends the gathering")
            .expect("no panic");
        assert_eq!(combiner.queue().gathering, 0);
    }

    #[tokio::test]
    async fn gathering_ends_after_its_longest_wait_when_too_few_writes_come() {
        let combiner = Combiner::default();
        queue_writes(&combiner, 1);
        tokio::time::timeout(
            Duration::from_secs(60),
            combiner.gather(5, Duration::from_millis(1)),
        )
        .await
        .expect("gathering ended by its deadline");
        assert_eq!(combiner.queue().gathering, 0);
    }

    #[test]
    fn a_write_that_finds_no_lane_at_work_starts_one_at_once() {
        assert!(starts_lane(0, 1, 3, false));
        // Even with every node out of the rotation (1 lane at least).
        assert!(starts_lane(0, 1, 1, false));
    }

    #[test]
    fn while_a_lane_is_at_work_another_starts_only_once_a_full_batch_waits() {
        assert!(!starts_lane(1, 1, 3, false));
        assert!(!starts_lane(1, FULL - 1, 3, false));
        assert!(starts_lane(1, FULL, 3, false));
        assert!(starts_lane(2, FULL + 10, 3, false));
    }

    #[test]
    fn a_slow_batch_lets_any_waiting_write_start_another_lane() {
        assert!(starts_lane(1, 1, 3, true));
        assert!(!starts_lane(1, 0, 3, true), "nothing waits");
        assert!(!starts_lane(3, 1, 3, true), "no lane left");
    }

    #[test]
    fn never_more_lanes_than_allowed() {
        assert!(!starts_lane(3, FULL * 4, 3, false));
        assert!(!starts_lane(1, FULL, 1, false));
    }
}
