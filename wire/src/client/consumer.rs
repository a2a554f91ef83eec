//! Consumer of one (topic, partition): polls with long-poll Fetch or
//! streams with Subscribe from an offset, resumes from a group's committed
//! offset, and commits offsets. Tracks the next offset itself; transient
//! failures are retried with the client's backoff (a re-subscribe resumes
//! at the next unseen offset, so nothing is skipped or repeated).

use std::time::Duration;

use super::connect::Client;
use super::error::{ClientError, RetryClass};
use super::runtime::Runtime;
use crate::Streaming;
use crate::call::Response;
use crate::proto::shardlog::v1 as pb;

/// Where a [`Consumer`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// At this offset.
    Offset(u64),
    /// At the offset `group` last committed for the partition, or
    /// `otherwise` when it committed nothing.
    Committed {
        /// The consumer group.
        group: String,
        /// The offset to use without a committed one.
        otherwise: u64,
    },
}

/// Reads one partition in order.
pub struct Consumer<R: Runtime> {
    client: Client<R>,
    topic: String,
    partition: u32,
    next_offset: u64,
    group: Option<String>,
    /// Per-response bound sent as `max_bytes` (0 = server default).
    fetch_bytes_max: u32,
}

impl<R: Runtime> std::fmt::Debug for Consumer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("next_offset", &self.next_offset)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Slack added to the long-poll wait for the call's own deadline.
const LONG_POLL_SLACK: Duration = Duration::from_secs(5);

impl<R: Runtime> Consumer<R> {
    pub(crate) async fn new(
        client: Client<R>,
        topic: &str,
        partition: u32,
        start: StartAt,
    ) -> Result<Consumer<R>, ClientError> {
        let (next_offset, group) = match start {
            StartAt::Offset(offset) => (offset, None),
            StartAt::Committed { group, otherwise } => {
                let request = pb::GetCommittedOffsetRequest {
                    group: group.clone(),
                    topic: topic.to_owned(),
                    partition,
                };
                let timeout = client.inner.config.request_timeout;
                let response: pb::GetCommittedOffsetResponse =
                    client.call("GetCommittedOffset", &request, timeout).await?;
                (response.offset.unwrap_or(otherwise), Some(group))
            }
        };
        Ok(Consumer {
            client,
            topic: topic.to_owned(),
            partition,
            next_offset,
            group,
            fetch_bytes_max: 0,
        })
    }

    /// The offset the next poll reads from.
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    /// Moves the read position.
    pub fn seek(&mut self, offset: u64) {
        self.next_offset = offset;
    }

    /// Sets the per-response byte bound (0 = server default, 1 MiB).
    pub fn set_fetch_bytes_max(&mut self, bytes: u32) {
        self.fetch_bytes_max = bytes;
    }

    /// The next records from the position, waiting up to `max_wait` for
    /// new durable records (empty if none came). Advances the position.
    pub async fn poll(
        &mut self,
        max_wait: Duration,
    ) -> Result<Vec<pb::FetchedRecord>, ClientError> {
        let request = pb::FetchRequest {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.next_offset,
            max_bytes: self.fetch_bytes_max,
            max_records: 0,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
        };
        let timeout = max_wait + LONG_POLL_SLACK;
        let response: pb::FetchResponse = self.client.call("Fetch", &request, timeout).await?;
        self.next_offset = self.next_offset.max(response.next_offset);
        Ok(response.records)
    }

    /// Commits `offset` (the next offset to read) for the consumer's group.
    pub async fn commit_offset(&self, offset: u64) -> Result<(), ClientError> {
        let Some(group) = &self.group else {
            return Err(ClientError::InvalidConfig {
                setting: "group",
                reason: "commit needs a consumer started with StartAt::Committed".to_owned(),
            });
        };
        let request = pb::CommitOffsetRequest {
            group: group.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            metadata: String::new(),
        };
        let timeout = self.client.inner.config.request_timeout;
        let _: pb::CommitOffsetResponse =
            self.client.call("CommitOffset", &request, timeout).await?;
        Ok(())
    }

    /// Commits the current position.
    pub async fn commit(&self) -> Result<(), ClientError> {
        self.commit_offset(self.next_offset).await
    }

    /// Streams the partition from the position with Subscribe. Each
    /// [`Subscription::next`] yields the next batch of records and
    /// advances the position; a dropped stream is re-subscribed.
    pub fn subscribe(&mut self) -> Subscription<'_, R> {
        Subscription {
            consumer: self,
            stream: None,
            retries: 0,
        }
    }
}

/// A Subscribe stream of a [`Consumer`].
pub struct Subscription<'a, R: Runtime> {
    consumer: &'a mut Consumer<R>,
    stream: Option<Streaming<pb::FetchResponse>>,
    retries: u32,
}

impl<R: Runtime> std::fmt::Debug for Subscription<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Subscription<'_, R> {
    /// The next non-empty batch of records. Transient failures (connection
    /// loss, server restart) re-subscribe from the position after a
    /// backoff, up to the client's `retries_max` in a row.
    pub async fn next(&mut self) -> Result<Vec<pb::FetchedRecord>, ClientError> {
        loop {
            let error = match self.next_once().await {
                Ok(Some(records)) if !records.is_empty() => {
                    self.retries = 0;
                    return Ok(records);
                }
                Ok(_) => continue,
                Err(error) => error,
            };
            self.stream = None;
            let policy = self.consumer.client.inner.config.retry;
            if error.retry_class() == RetryClass::Fatal || self.retries >= policy.retries_max {
                return Err(error);
            }
            self.consumer.client.backoff(self.retries).await;
            self.retries += 1;
        }
    }

    /// One message: `Ok(None)` when the server ended the stream.
    async fn next_once(&mut self) -> Result<Option<Vec<pb::FetchedRecord>>, ClientError> {
        if self.stream.is_none() {
            self.stream = Some(self.open().await?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match stream.message().await {
            Ok(Some(response)) => {
                let consumer = &mut *self.consumer;
                consumer.next_offset = consumer.next_offset.max(response.next_offset);
                Ok(Some(response.records))
            }
            Ok(None) => Err(ClientError::Status {
                operation: "Subscribe",
                status: crate::Status::unavailable("subscription ended by the server"),
            }),
            Err(status) => Err(ClientError::Status {
                operation: "Subscribe",
                status,
            }),
        }
    }

    async fn open(&self) -> Result<Streaming<pb::FetchResponse>, ClientError> {
        let consumer = &*self.consumer;
        let request = pb::SubscribeRequest {
            topic: consumer.topic.clone(),
            partition: consumer.partition,
            offset: consumer.next_offset,
            max_bytes: consumer.fetch_bytes_max,
        };
        let pool = &consumer.client.inner.pool;
        let channel = pool.channel(0).await?;
        let response: Result<Response<Streaming<pb::FetchResponse>>, _> = channel
            .server_streaming(
                "/shardlog.v1.Log/Subscribe",
                &request,
                super::CallOptions::default(),
            )
            .await;
        match response {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                if status.connection_lost() {
                    pool.mark_broken(0);
                }
                Err(ClientError::Status {
                    operation: "Subscribe",
                    status,
                })
            }
        }
    }
}
