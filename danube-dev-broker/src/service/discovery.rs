//! `danube.Discovery`: this broker owns every topic.

use crate::state::{namespace_of, BrokerState};
use danube_core::proto::discovery_server::Discovery;
use danube_core::proto::topic_lookup_response::LookupType;
use danube_core::proto::{TopicLookupRequest, TopicLookupResponse, TopicPartitionsResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Discovery service.
#[derive(Debug)]
pub(crate) struct DiscoverySvc {
    pub state: Arc<BrokerState>,
}

#[tonic::async_trait]
impl Discovery for DiscoverySvc {
    async fn topic_lookup(
        &self,
        request: Request<TopicLookupRequest>,
    ) -> Result<Response<TopicLookupResponse>, Status> {
        // Answer with the address the client reached, so that a broker
        // listening on 0.0.0.0 still hands out a connectable URL.
        let scheme = if self.state.config.tls.is_some() { "https" } else { "http" };
        let url = request
            .local_addr()
            .filter(|a| !a.ip().is_unspecified())
            .map_or_else(|| self.state.broker_url.clone(), |a| format!("{scheme}://{a}"));
        let req = request.into_inner();
        namespace_of(&req.topic)?;
        Ok(Response::new(TopicLookupResponse {
            request_id: req.request_id,
            response_type: LookupType::Connect as i32,
            connect_url: url.clone(),
            broker_url: url,
            proxy: false,
        }))
    }

    async fn topic_partitions(
        &self,
        request: Request<TopicLookupRequest>,
    ) -> Result<Response<TopicPartitionsResponse>, Status> {
        let req = request.into_inner();
        namespace_of(&req.topic)?;
        Ok(Response::new(TopicPartitionsResponse {
            request_id: req.request_id,
            partitions: self.state.partitions(&req.topic),
        }))
    }
}
