//! Topic administration: create, list, describe, delete. Thin typed
//! wrappers over the Log service's admin RPCs with the client's retries.

use super::connect::Client;
use super::error::ClientError;
use super::runtime::Runtime;
use crate::proto::shardlog::v1 as pb;

/// The admin API of a [`Client`].
pub struct Admin<R: Runtime> {
    client: Client<R>,
}

impl<R: Runtime> std::fmt::Debug for Admin<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("client", &self.client)
            .finish()
    }
}

impl<R: Runtime> Admin<R> {
    pub(crate) fn new(client: Client<R>) -> Admin<R> {
        Admin { client }
    }

    /// Creates `topic` with `partition_count` partitions and server-default
    /// retention. ALREADY_EXISTS if it exists (also when a retried create
    /// had in fact succeeded).
    pub async fn create_topic(
        &self,
        topic: &str,
        partition_count: u32,
    ) -> Result<pb::TopicDescription, ClientError> {
        self.create_topic_with(topic, partition_count, None).await
    }

    /// [`create_topic`](Self::create_topic) with a retention policy.
    pub async fn create_topic_with(
        &self,
        topic: &str,
        partition_count: u32,
        retention: Option<pb::RetentionPolicy>,
    ) -> Result<pb::TopicDescription, ClientError> {
        let request = pb::CreateTopicRequest {
            topic: topic.to_owned(),
            partition_count,
            retention,
        };
        let response: pb::CreateTopicResponse = self.call("CreateTopic", &request).await?;
        response.topic.ok_or_else(|| missing(topic))
    }

    /// Deletes `topic` and its data. NOT_FOUND if it does not exist (also
    /// when a retried delete had in fact succeeded).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), ClientError> {
        let request = pb::DeleteTopicRequest {
            topic: topic.to_owned(),
        };
        let _: pb::DeleteTopicResponse = self.call("DeleteTopic", &request).await?;
        Ok(())
    }

    /// The names of all topics.
    pub async fn list_topics(&self) -> Result<Vec<String>, ClientError> {
        let response: pb::ListTopicsResponse =
            self.call("ListTopics", &pb::ListTopicsRequest {}).await?;
        Ok(response.topics)
    }

    /// The topic's partitions with their offsets, owners and sizes.
    pub async fn describe_topic(&self, topic: &str) -> Result<pb::TopicDescription, ClientError> {
        let request = pb::DescribeTopicRequest {
            topic: topic.to_owned(),
        };
        let response: pb::DescribeTopicResponse = self.call("DescribeTopic", &request).await?;
        response.topic.ok_or_else(|| missing(topic))
    }

    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &'static str,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let timeout = self.client.inner.config.request_timeout;
        self.client.call(method, request, timeout).await
    }
}

fn missing(topic: &str) -> ClientError {
    ClientError::Topic {
        topic: topic.to_owned(),
        reason: "server response without a topic description".to_owned(),
    }
}
