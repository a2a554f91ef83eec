//! The standard health service `grpc.health.v1.Health` (grpc/grpc
//! doc/health-checking.md) and the [`HealthReporter`] the server uses to set
//! what it reports.
//!
//! One reporter per executor (it is `Rc`-based, `!Send`): the server sets the
//! same statuses on every core. `Check` answers from the current table
//! (NOT_FOUND for an unknown service; `""` is the server as a whole), `List`
//! returns the table, and `Watch` streams the current status and then every
//! change of it (SERVICE_UNKNOWN while the service is unknown). Rapid changes
//! between two sends are coalesced: a watcher always ends on the latest
//! status, as the protocol allows.
//!
//! Draining: [`HealthReporter::set_all_not_serving`] flips every service to
//! NOT_SERVING, tells every watcher, and freezes the table so nothing flips a
//! draining server back to SERVING.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::proto::grpc::health::v1::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use crate::server::Router;
use crate::status::Status;
use crate::{Request, Response, ResponseSink};

pub use crate::proto::grpc::health::v1::health_check_response::ServingStatus;

/// Fully-qualified name of the health service.
pub const SERVICE_NAME: &str = "grpc.health.v1.Health";

/// Most services the reporter tracks; further names are refused (the table
/// is answered whole by `List`, so it must stay small).
pub const SERVICES_MAX: usize = 1024;

/// Most concurrent `Watch` calls per reporter (per executor); more answer
/// RESOURCE_EXHAUSTED.
pub const WATCHERS_MAX: usize = 4096;

/// Longest service name accepted in a request or by the reporter, in bytes.
pub const SERVICE_NAME_BYTES_MAX: usize = 512;

/// The name that stands for the whole server.
pub const WHOLE_SERVER: &str = "";

/// Why the reporter refused a status update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// The server is draining: statuses are frozen at NOT_SERVING.
    #[error("health statuses are frozen: the server is draining")]
    Draining,
    /// [`SERVICES_MAX`] services are already tracked.
    #[error("health table full ({SERVICES_MAX} services); {service:?} not added")]
    TableFull {
        /// The refused service.
        service: String,
    },
    /// The name is longer than [`SERVICE_NAME_BYTES_MAX`].
    #[error("service name of {name_bytes} bytes exceeds {SERVICE_NAME_BYTES_MAX}")]
    NameTooLong {
        /// Length of the refused name.
        name_bytes: usize,
    },
}

#[derive(Debug)]
struct HealthState {
    statuses: BTreeMap<String, ServingStatus>,
    /// Wakers of parked watchers by watcher id; woken (and removed) on every
    /// change. At most one entry per live watcher.
    watchers: HashMap<u64, Waker>,
    live_watchers: usize,
    next_watcher_id: u64,
    draining: bool,
}

/// Sets the statuses the health service reports, and wakes watchers.
///
/// Cheap to clone (one `Rc`); all clones share one table. Starts with the
/// whole server (`""`) SERVING.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    state: Rc<RefCell<HealthState>>,
}

impl Default for HealthReporter {
    fn default() -> Self {
        HealthReporter::new()
    }
}

impl HealthReporter {
    /// A reporter whose table holds only the whole server, SERVING.
    pub fn new() -> HealthReporter {
        let mut statuses = BTreeMap::new();
        statuses.insert(WHOLE_SERVER.to_owned(), ServingStatus::Serving);
        HealthReporter {
            state: Rc::new(RefCell::new(HealthState {
                statuses,
                watchers: HashMap::new(),
                live_watchers: 0,
                next_watcher_id: 0,
                draining: false,
            })),
        }
    }

    /// Sets `service`'s status (adding it if new) and wakes watchers.
    /// Ignored, with a warning, while draining or when the table is full;
    /// see [`try_set_serving_status`](Self::try_set_serving_status).
    pub fn set_serving_status(&self, service: &str, status: ServingStatus) {
        if let Err(error) = self.try_set_serving_status(service, status) {
            tracing::warn!(%error, service, "health status not updated");
        }
    }

    /// Sets `service`'s status, or says why it could not.
    pub fn try_set_serving_status(
        &self,
        service: &str,
        status: ServingStatus,
    ) -> Result<(), HealthError> {
        if service.len() > SERVICE_NAME_BYTES_MAX {
            return Err(HealthError::NameTooLong {
                name_bytes: service.len(),
            });
        }
        let wakers = {
            let mut state = self.state.borrow_mut();
            if state.draining {
                return Err(HealthError::Draining);
            }
            let known = state.statuses.contains_key(service);
            if !known && state.statuses.len() >= SERVICES_MAX {
                return Err(HealthError::TableFull {
                    service: service.to_owned(),
                });
            }
            if state.statuses.insert(service.to_owned(), status) == Some(status) {
                return Ok(());
            }
            take_wakers(&mut state)
        };
        wake(wakers);
        Ok(())
    }

    /// Drain: every tracked service (and the whole server) becomes
    /// NOT_SERVING, watchers are told, and later updates are refused.
    pub fn set_all_not_serving(&self) {
        let wakers = {
            let mut state = self.state.borrow_mut();
            state.draining = true;
            for status in state.statuses.values_mut() {
                *status = ServingStatus::NotServing;
            }
            take_wakers(&mut state)
        };
        wake(wakers);
    }

    /// Whether [`set_all_not_serving`](Self::set_all_not_serving) was called.
    pub fn is_draining(&self) -> bool {
        self.state.borrow().draining
    }

    /// `service`'s current status; `None` if unknown.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.state.borrow().statuses.get(service).copied()
    }

    /// Every tracked service with its status, by name.
    pub fn statuses(&self) -> BTreeMap<String, ServingStatus> {
        self.state.borrow().statuses.clone()
    }

    fn register_watcher(&self) -> Result<WatcherSlot, Status> {
        let mut state = self.state.borrow_mut();
        if state.live_watchers >= WATCHERS_MAX {
            return Err(Status::resource_exhausted(format!(
                "too many health watchers (max {WATCHERS_MAX})"
            )));
        }
        state.live_watchers += 1;
        let id = state.next_watcher_id;
        state.next_watcher_id += 1;
        Ok(WatcherSlot {
            state: Rc::clone(&self.state),
            id,
        })
    }

    /// Resolves with `service`'s status once it differs from `last_sent`
    /// (at once on the first call, where `last_sent` is `None`).
    async fn next_status(
        &self,
        slot: &WatcherSlot,
        service: &str,
        last_sent: Option<ServingStatus>,
    ) -> ServingStatus {
        poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            let current = state
                .statuses
                .get(service)
                .copied()
                .unwrap_or(ServingStatus::ServiceUnknown);
            if Some(current) != last_sent {
                return Poll::Ready(current);
            }
            state.watchers.insert(slot.id, cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

fn take_wakers(state: &mut HealthState) -> Vec<Waker> {
    state.watchers.drain().map(|(_, waker)| waker).collect()
}

fn wake(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// A live watcher's registration; dropping it (the call ended or was
/// cancelled) frees its slot and its parked waker.
struct WatcherSlot {
    state: Rc<RefCell<HealthState>>,
    id: u64,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut state = self.state.borrow_mut();
        state.watchers.remove(&self.id);
        state.live_watchers -= 1;
    }
}

fn check_name(service: &str) -> Result<(), Status> {
    if service.len() > SERVICE_NAME_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "service name longer than {SERVICE_NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Registers `grpc.health.v1.Health` (Check, List, Watch) answering from
/// `reporter`.
pub fn register(router: &mut Router, reporter: HealthReporter) {
    let check_reporter = reporter.clone();
    router.unary(
        "/grpc.health.v1.Health/Check",
        move |request: Request<HealthCheckRequest>| {
            let reporter = check_reporter.clone();
            async move { check(&reporter, request.get_ref()) }
        },
    );
    let list_reporter = reporter.clone();
    router.unary(
        "/grpc.health.v1.Health/List",
        move |_request: Request<HealthListRequest>| {
            let reporter = list_reporter.clone();
            async move { Ok(Response::new(list(&reporter))) }
        },
    );
    router.server_streaming(
        "/grpc.health.v1.Health/Watch",
        move |request: Request<HealthCheckRequest>, sink| watch(reporter.clone(), request, sink),
    );
}

fn check(
    reporter: &HealthReporter,
    request: &HealthCheckRequest,
) -> Result<Response<HealthCheckResponse>, Status> {
    check_name(&request.service)?;
    match reporter.status(&request.service) {
        Some(status) => Ok(Response::new(HealthCheckResponse {
            status: status.into(),
        })),
        None => Err(Status::not_found(format!(
            "unknown service {:?}",
            request.service
        ))),
    }
}

fn list(reporter: &HealthReporter) -> HealthListResponse {
    HealthListResponse {
        statuses: reporter
            .statuses()
            .into_iter()
            .map(|(name, status)| {
                (
                    name,
                    HealthCheckResponse {
                        status: status.into(),
                    },
                )
            })
            .collect(),
    }
}

async fn watch(
    reporter: HealthReporter,
    request: Request<HealthCheckRequest>,
    mut sink: ResponseSink<HealthCheckResponse>,
) -> Result<(), Status> {
    let service = request.into_inner().service;
    check_name(&service)?;
    let slot = reporter.register_watcher()?;
    let mut last_sent = None;
    // Ends when the client goes away: `send` fails, or the server drops this
    // future on cancellation (which frees the slot).
    loop {
        let status = reporter.next_status(&slot, &service, last_sent).await;
        sink.send(HealthCheckResponse {
            status: status.into(),
        })
        .await?;
        last_sent = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_knows_whole_server_and_refuses_unknown() {
        let reporter = HealthReporter::new();
        reporter.set_serving_status("a.S", ServingStatus::NotServing);
        let whole = check(&reporter, &HealthCheckRequest { service: "".into() }).expect("known");
        assert_eq!(whole.get_ref().status(), ServingStatus::Serving);
        let a = check(
            &reporter,
            &HealthCheckRequest {
                service: "a.S".into(),
            },
        )
        .expect("known");
        assert_eq!(a.get_ref().status(), ServingStatus::NotServing);
        let unknown = check(
            &reporter,
            &HealthCheckRequest {
                service: "b".into(),
            },
        );
        assert_eq!(
            unknown.expect_err("unknown").code(),
            crate::status::Code::NOT_FOUND
        );
    }

    #[test]
    fn drain_flips_everything_and_freezes() {
        let reporter = HealthReporter::new();
        reporter.set_serving_status("a.S", ServingStatus::Serving);
        reporter.set_all_not_serving();
        assert!(reporter.is_draining());
        assert_eq!(reporter.status(""), Some(ServingStatus::NotServing));
        assert_eq!(reporter.status("a.S"), Some(ServingStatus::NotServing));
        assert_eq!(
            reporter.try_set_serving_status("a.S", ServingStatus::Serving),
            Err(HealthError::Draining)
        );
        assert_eq!(list(&reporter).statuses.len(), 2);
    }

    #[test]
    fn table_and_names_are_bounded() {
        let reporter = HealthReporter::new();
        for i in 0..SERVICES_MAX - 1 {
            reporter
                .try_set_serving_status(&format!("s{i}"), ServingStatus::Serving)
                .expect("room left");
        }
        assert!(matches!(
            reporter.try_set_serving_status("one.too.many", ServingStatus::Serving),
            Err(HealthError::TableFull { .. })
        ));
        let long = "x".repeat(SERVICE_NAME_BYTES_MAX + 1);
        assert!(matches!(
            reporter.try_set_serving_status(&long, ServingStatus::Serving),
            Err(HealthError::NameTooLong { .. })
        ));
    }

    #[test]
    fn watcher_sees_current_then_changes() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let reporter = HealthReporter::new();
                let slot = reporter.register_watcher().expect("room");
                let first = reporter.next_status(&slot, "w", None).await;
                assert_eq!(first, ServingStatus::ServiceUnknown);
                let waiter = {
                    let reporter = reporter.clone();
                    glommio::spawn_local(async move {
                        let slot = reporter.register_watcher().expect("room");
                        reporter
                            .next_status(&slot, "w", Some(ServingStatus::ServiceUnknown))
                            .await
                    })
                };
                glommio::yield_if_needed().await;
                reporter.set_serving_status("w", ServingStatus::Serving);
                assert_eq!(waiter.await, ServingStatus::Serving);
                drop(slot);
                assert_eq!(reporter.state.borrow().live_watchers, 0);
                assert!(reporter.state.borrow().watchers.is_empty());
            })
            .expect("executor starts")
            .join()
            .expect("executor joins");
    }
}
