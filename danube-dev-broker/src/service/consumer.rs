//! `danube.ConsumerService`.

use crate::state::{BrokerState, ConsumerStream};
use danube_core::proto::consumer_service_server::ConsumerService;
use danube_core::proto::{
    AckRequest, AckResponse, ConsumerRequest, ConsumerResponse, NackRequest, NackResponse, ReceiveRequest,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Consumer service.
#[derive(Debug)]
pub(crate) struct ConsumerSvc {
    pub state: Arc<BrokerState>,
}

#[tonic::async_trait]
impl ConsumerService for ConsumerSvc {
    type ReceiveMessagesStream = ConsumerStream;

    async fn subscribe(&self, request: Request<ConsumerRequest>) -> Result<Response<ConsumerResponse>, Status> {
        let req = request.into_inner();
        let consumer_id = self
            .state
            .subscribe(&req.topic_name, &req.subscription, &req.consumer_name, req.subscription_type, req.key_filters)
            .inspect_err(|e| tracing::info!(topic = %req.topic_name, error = %e, "subscription refused"))?;
        Ok(Response::new(ConsumerResponse {
            request_id: req.request_id,
            consumer_id,
            consumer_name: req.consumer_name,
        }))
    }

    async fn receive_messages(
        &self,
        request: Request<ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveMessagesStream>, Status> {
        let stream = self.state.open_stream(request.into_inner().consumer_id)?;
        Ok(Response::new(stream))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let req = request.into_inner();
        let msg_id = req.msg_id.ok_or_else(|| Status::invalid_argument("ack without msg_id"))?;
        self.state.ack(&msg_id.topic_name, &req.subscription_name, msg_id.topic_offset)?;
        Ok(Response::new(AckResponse { request_id: req.request_id }))
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        let req = request.into_inner();
        let msg_id = req.msg_id.ok_or_else(|| Status::invalid_argument("nack without msg_id"))?;
        if let Some(reason) = &req.reason {
            tracing::debug!(topic = %msg_id.topic_name, offset = msg_id.topic_offset, %reason, "nack");
        }
        self.state.nack(
            &msg_id.topic_name,
            &req.subscription_name,
            msg_id.topic_offset,
            req.delay_ms.map(Duration::from_millis),
        )?;
        Ok(Response::new(NackResponse { request_id: req.request_id }))
    }
}
