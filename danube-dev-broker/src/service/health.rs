//! `danube.HealthCheck`: OK for known producer/consumer ids, CLOSE otherwise.

use crate::state::BrokerState;
use danube_core::proto::health_check_request::ClientType;
use danube_core::proto::health_check_response::ClientStatus;
use danube_core::proto::health_check_server::HealthCheck;
use danube_core::proto::{HealthCheckRequest, HealthCheckResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Health check service.
#[derive(Debug)]
pub(crate) struct HealthSvc {
    pub state: Arc<BrokerState>,
}

#[tonic::async_trait]
impl HealthCheck for HealthSvc {
    async fn health_check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let req = request.into_inner();
        let known = match ClientType::try_from(req.client) {
            Ok(ClientType::Producer) => self.state.has_producer(req.id),
            Ok(ClientType::Consumer) => self.state.touch_consumer(req.id),
            Err(_) => false,
        };
        let status = if known { ClientStatus::Ok } else { ClientStatus::Close };
        Ok(Response::new(HealthCheckResponse { status: status as i32 }))
    }
}
