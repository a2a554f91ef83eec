//! Cross-core calls: a request for a partition owned by another shard crosses
//! a bounded glommio `channel_mesh` queue to its owner, and the reply comes
//! back the same way.
//!
//! Each ordered pair of shards has its own bounded SPSC queue (no lock shared
//! across cores). A shard keeps at most `inflight_max` calls waiting on other
//! shards; beyond that, and when a peer's queue stays full, a call is refused
//! `UNAVAILABLE` before anything is written. A call keeps its slot until the
//! owner replies, even when its caller went away (the owner learns of that
//! through [`CallerGone`] and cuts long waits short), and an owner runs at
//! most `inflight_max` data-path calls per peer for others. We measured this mesh against
//! `flume` for the hop (benches/benches/crosscore.rs, docs/architecture.md)
//! and kept the mesh for its lower tail.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use shardlog_wire::Code;

use crate::ops::{Failure, Op, Reply};

/// How long a call waits for room in a full peer queue before it is
/// refused UNAVAILABLE.
pub const QUEUE_FULL_WAIT: Duration = Duration::from_millis(50);

/// What a refusal before any write says; a stream's failure status rewords it,
/// since other requests of the stream may have been written.
pub const NOTHING_WRITTEN: &str = "nothing was written";

/// How a call behaves when the mesh is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Data path: refuse UNAVAILABLE (nothing written) when the in-flight
    /// bound is reached or the peer's queue stays full.
    Shed,
    /// Control plane: wait for room.
    Wait,
}

/// What travels between shards.
pub enum Envelope {
    /// A call to execute on the receiving shard.
    Request {
        /// Shard that made the call and awaits the reply.
        origin: usize,
        /// Correlation id, unique per origin.
        id: u64,
        /// Past this instant the owner drops the call unexecuted.
        deadline: Option<Instant>,
        /// Resolves once the caller has gone away.
        caller_gone: CallerGone,
        /// What to do.
        op: Op,
    },
    /// The outcome of a call, sent back to its origin.
    Reply {
        /// The call's correlation id.
        id: u64,
        /// Its outcome.
        result: Result<Reply, Failure>,
    },
}

/// Executes an op on this shard (the same code serves local and remote
/// calls).
pub type Executor = Rc<
    dyn Fn(
        Op,
        Option<Instant>,
        CallerGone,
    ) -> Pin<Box<dyn Future<Output = Result<Reply, Failure>>>>,
>;

/// Tells the shard running a call whether its caller is still there. The
/// caller's side is a oneshot sender that is never sent on: dropping it (the
/// call ended or was dropped) resolves [`CallerGone::wait`] on the owner.
pub struct CallerGone(Option<oneshot::Receiver<()>>);

impl CallerGone {
    /// For a call on the caller's own shard: dropping the caller drops the op
    /// itself, so there is nothing to watch.
    pub fn never() -> Self {
        Self(None)
    }

    /// Completes once the caller has gone away; never for [`Self::never`].
    pub async fn wait(&mut self) {
        match &mut self.0 {
            Some(gone) => {
                let _ = gone.await;
            }
            None => std::future::pending().await,
        }
    }
}

/// This shard's end of the mesh.
pub struct Mesh {
    shard: usize,
    senders: Senders<Envelope>,
    /// One turn at a time per target queue (a single permit; glommio's semaphore serves
    /// waiters in arrival order and lets no newcomer pass them). Calls from this shard must
    /// reach their owner in the order made, since the owner starts them in arrival order and
    /// a stream's produces take offsets in that order: a call that finds the queue full holds
    /// the turn while it waits, so later calls queue behind it instead of overtaking it.
    send_turns: Vec<Semaphore>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Result<Reply, Failure>>>>,
    next_id: Cell<u64>,
    inflight_max: usize,
    refused_total: Cell<u64>,
    calls_total: Cell<u64>,
    /// Data-path ops this shard is running for other shards right now.
    served_running: Cell<usize>,
    /// Bound on `served_running`: what the peers may have in flight here.
    served_running_max: usize,
}

impl Mesh {
    /// Wraps this shard's senders; `shard` must equal the mesh peer id.
    pub fn new(shard: usize, senders: Senders<Envelope>, inflight_max: usize) -> Rc<Self> {
        assert_eq!(senders.peer_id(), shard, "mesh peer ids follow shard order");
        assert!(inflight_max > 0);
        let send_turns = (0..senders.nr_consumers())
            .map(|_| Semaphore::new(1))
            .collect();
        let peers = senders.nr_consumers().saturating_sub(1).max(1);
        Rc::new(Self {
            shard,
            senders,
            send_turns,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            inflight_max,
            refused_total: Cell::new(0),
            calls_total: Cell::new(0),
            served_running: Cell::new(0),
            served_running_max: inflight_max.saturating_mul(peers),
        })
    }

    /// Calls waiting for a reply right now, including calls whose caller went
    /// away: their slot is freed when the owner replies.
    pub fn inflight(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Calls refused because a queue or the in-flight bound was full.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.get()
    }

    /// Calls sent to other shards.
    pub fn calls_total(&self) -> u64 {
        self.calls_total.get()
    }

    /// Data-path ops this shard is running for other shards right now.
    pub fn served_running(&self) -> usize {
        self.served_running.get()
    }

    /// Runs `op` on shard `target` and returns its reply. Data-path calls
    /// (`Admission::Shed`) are refused UNAVAILABLE under overload;
    /// control-plane calls (`Admission::Wait`: catalog changes, partition
    /// creation, metrics) wait for room instead, so a busy data path can
    /// never leave shards with different catalogs.
    pub async fn call(
        &self,
        target: usize,
        op: Op,
        deadline: Option<Instant>,
        admission: Admission,
    ) -> Result<Reply, Failure> {
        assert_ne!(target, self.shard, "local calls do not cross the mesh");
        if admission == Admission::Shed && self.inflight() >= self.inflight_max {
            return Err(self.refuse(target, "too many cross-core calls in flight"));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, reply_tx);
        let (caller_alive, caller_gone) = oneshot::channel::<()>();
        // Dropping the call (client cancelled) tells the owner; the slot stays
        // taken until the owner replies if the request went out.
        let mut guard = PendingGuard {
            mesh: self,
            id,
            sent: false,
            _caller_alive: caller_alive,
        };
        let envelope = Envelope::Request {
            origin: self.shard,
            id,
            deadline,
            caller_gone: CallerGone(Some(caller_gone)),
            op,
        };
        self.send(target, envelope, admission).await?;
        guard.sent = true;
        self.calls_total.set(self.calls_total.get() + 1);
        match reply_rx.await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                Code::UNAVAILABLE,
                format!("shard {target} went away before replying"),
            )),
        }
    }

    async fn send(
        &self,
        target: usize,
        envelope: Envelope,
        admission: Admission,
    ) -> Result<(), Failure> {
        let in_turn = async {
            let Ok(_turn) = self.send_turns[target].acquire_permit(1).await else {
                return false;
            };
            match self.senders.try_send_to(target, envelope) {
                Ok(()) => true,
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(
                    envelope,
                ))) => self.senders.send_to(target, envelope).await.is_ok(),
                Err(_) => false,
            }
        };
        let sent = match admission {
            Admission::Wait => in_turn.await,
            Admission::Shed => {
                let give_up = async {
                    glommio::timer::sleep(QUEUE_FULL_WAIT).await;
                    false
                };
                futures_lite::future::or(in_turn, give_up).await
            }
        };
        if sent {
            Ok(())
        } else {
            Err(self.refuse(target, "cross-core queue full or closed"))
        }
    }

    fn refuse(&self, target: usize, why: &str) -> Failure {
        self.refused_total.set(self.refused_total.get() + 1);
        Failure::new(
            Code::UNAVAILABLE,
            format!(
                "shard {} -> shard {target}: {why}; {NOTHING_WRITTEN}, retry",
                self.shard
            ),
        )
    }

    fn complete(&self, id: u64, result: Result<Reply, Failure>) {
        if let Some(reply_tx) = self.pending.borrow_mut().remove(&id) {
            // The caller may have gone away meanwhile; nothing to do then.
            let _ = reply_tx.send(result);
        }
    }

    /// Serves the mesh: executes requests from every peer and routes replies
    /// to their callers. Returns when every peer has closed its queue.
    pub async fn serve(self: Rc<Self>, mut receivers: Receivers<Envelope>, executor: Executor) {
        let tasks: Vec<_> = receivers
            .streams()
            .into_iter()
            .map(|(_peer, receiver)| {
                let mesh = self.clone();
                let executor = executor.clone();
                glommio::spawn_local(async move {
                    while let Some(envelope) = receiver.recv().await {
                        mesh.dispatch(envelope, &executor);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
    }

    fn dispatch(self: &Rc<Self>, envelope: Envelope, executor: &Executor) {
        match envelope {
            Envelope::Reply { id, result } => self.complete(id, result),
            Envelope::Request {
                origin,
                id,
                deadline,
                caller_gone,
                op,
            } => {
                let data_path = !op.is_control_plane();
                if data_path && self.served_running.get() >= self.served_running_max {
                    // Never reached while peers keep their own bound; the
                    // owner does not rely on that.
                    self.refused_total.set(self.refused_total.get() + 1);
                    let refusal = Failure::new(
                        Code::UNAVAILABLE,
                        format!(
                            "shard {} runs too many calls for other shards; {NOTHING_WRITTEN}, retry",
                            self.shard
                        ),
                    );
                    self.reply(origin, id, Err(refusal));
                    return;
                }
                // Spawned in arrival order: glommio runs tasks FIFO, so calls
                // from one origin start (and take offsets) in the order sent.
                let mesh = self.clone();
                let running = data_path.then(|| ServedGuard::new(self.clone()));
                let run = executor(op, deadline, caller_gone);
                glommio::spawn_local(async move {
                    let result = run.await;
                    drop(running);
                    mesh.send_reply(origin, id, result).await;
                })
                .detach();
            }
        }
    }

    /// Sends a reply from a task of its own (the queue may be full).
    fn reply(self: &Rc<Self>, origin: usize, id: u64, result: Result<Reply, Failure>) {
        let mesh = self.clone();
        glommio::spawn_local(async move { mesh.send_reply(origin, id, result).await }).detach();
    }

    async fn send_reply(&self, origin: usize, id: u64, result: Result<Reply, Failure>) {
        // A closed origin is shutting down; its caller is gone.
        let _ = self
            .senders
            .send_to(origin, Envelope::Reply { id, result })
            .await;
    }

    /// Closes this shard's outgoing queues (shutdown).
    pub fn close(&self) {
        self.senders.close();
    }
}

/// A call's reply slot. Dropped before the request went out, it frees the
/// slot; after, the slot stays until the owner's reply frees it (see
/// [`Mesh::complete`]), so callers that vanish cannot push more calls onto the
/// owners than `inflight_max`. Dropping `_caller_alive` tells the owner.
struct PendingGuard<'a> {
    mesh: &'a Mesh,
    id: u64,
    sent: bool,
    _caller_alive: oneshot::Sender<()>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.mesh.pending.borrow_mut().remove(&self.id);
        }
    }
}

/// Counts one data-path op run for another shard while it lives.
struct ServedGuard {
    mesh: Rc<Mesh>,
}

impl ServedGuard {
    fn new(mesh: Rc<Mesh>) -> Self {
        mesh.served_running.set(mesh.served_running.get() + 1);
        Self { mesh }
    }
}

impl Drop for ServedGuard {
    fn drop(&mut self) {
        self.mesh
            .served_running
            .set(self.mesh.served_running.get() - 1);
    }
}
