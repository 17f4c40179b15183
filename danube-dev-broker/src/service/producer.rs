//! `danube.ProducerService`.

use crate::state::BrokerState;
use danube_core::proto::producer_service_server::ProducerService;
use danube_core::proto::{MessageResponse, ProducerRequest, ProducerResponse, StreamMessage};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Producer service.
#[derive(Debug)]
pub(crate) struct ProducerSvc {
    pub state: Arc<BrokerState>,
}

#[tonic::async_trait]
impl ProducerService for ProducerSvc {
    async fn create_producer(&self, request: Request<ProducerRequest>) -> Result<Response<ProducerResponse>, Status> {
        let delay = self.state.producer_creation_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let req = request.into_inner();
        let subject = req.schema_ref.as_ref().map(|s| s.subject.as_str());
        let producer_id = self
            .state
            .create_producer(&req.topic_name, &req.producer_name, req.dispatch_strategy, subject)
            .inspect_err(|e| tracing::info!(topic = %req.topic_name, error = %e, "producer creation refused"))?;
        Ok(Response::new(ProducerResponse {
            request_id: req.request_id,
            producer_id,
            producer_name: req.producer_name,
        }))
    }

    async fn send_message(&self, request: Request<StreamMessage>) -> Result<Response<MessageResponse>, Status> {
        let request_id = self.state.send(request.into_inner())?;
        Ok(Response::new(MessageResponse { request_id }))
    }
}
