//! `danube_schema.SchemaRegistry`.
//!
//! The topic-schema admin RPCs (`ConfigureTopicSchema`,
//! `UpdateTopicValidationPolicy`, `GetTopicSchemaConfig`) return `Unimplemented`.

use crate::persist::MetaRecord;
use crate::schema::{NewSchema, SchemaVersionRecord};
use crate::state::{BrokerState, StateError};
use danube_core::proto::danube_schema::schema_registry_server::SchemaRegistry;
use danube_core::proto::danube_schema::{
    CheckCompatibilityRequest, CheckCompatibilityResponse, ConfigureTopicSchemaRequest, ConfigureTopicSchemaResponse,
    DeleteSchemaVersionRequest, DeleteSchemaVersionResponse, GetLatestSchemaRequest, GetSchemaRequest,
    GetSchemaResponse, GetTopicSchemaConfigRequest, GetTopicSchemaConfigResponse, ListSubjectsRequest,
    ListSubjectsResponse, ListVersionsRequest, ListVersionsResponse, RegisterSchemaRequest, RegisterSchemaResponse,
    SchemaVersionInfo, SetCompatibilityModeRequest, SetCompatibilityModeResponse, SubjectSummary,
    UpdateTopicValidationPolicyRequest, UpdateTopicValidationPolicyResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Schema registry service.
#[derive(Debug)]
pub(crate) struct SchemaSvc {
    pub state: Arc<BrokerState>,
}

fn to_status(e: crate::schema::SchemaError) -> Status {
    StateError::from(e).into()
}

fn response(r: &SchemaVersionRecord, mode: String) -> GetSchemaResponse {
    GetSchemaResponse {
        schema_id: r.schema_id,
        version: r.version,
        subject: r.subject.clone(),
        schema_type: r.schema_type.clone(),
        schema_definition: wrapped_definition(r),
        description: r.description.clone(),
        created_at: r.created_at,
        created_by: r.created_by.clone(),
        tags: r.tags.clone(),
        fingerprint: r.fingerprint.clone(),
        compatibility_mode: mode,
    }
}

/// The definition as Danube v0.15 answers it: the JSON of its `SchemaDefinition` enum
/// (`danube-schema` `metadata.rs`), not the registered bytes.
fn wrapped_definition(r: &SchemaVersionRecord) -> Vec<u8> {
    let text = String::from_utf8_lossy(&r.definition).into_owned();
    let wrapped = match r.schema_type.as_str() {
        "avro" => serde_json::json!({"Avro": {"raw_schema": text, "fingerprint": r.fingerprint}}),
        "json_schema" => serde_json::json!({"JsonSchema": {"raw_schema": text, "fingerprint": r.fingerprint}}),
        "protobuf" => serde_json::json!({"Protobuf": {
            "raw_proto": text, "message_name": "DefaultMessage", "fingerprint": r.fingerprint
        }}),
        "string" => serde_json::json!("String"),
        "number" => serde_json::json!("Number"),
        _ => serde_json::json!("Bytes"),
    };
    wrapped.to_string().into_bytes()
}

#[tonic::async_trait]
impl SchemaRegistry for SchemaSvc {
    async fn register_schema(
        &self,
        request: Request<RegisterSchemaRequest>,
    ) -> Result<Response<RegisterSchemaResponse>, Status> {
        let req = request.into_inner();
        let registered = self
            .state
            .schemas
            .lock()
            .register(NewSchema {
                subject: req.subject,
                schema_type: req.schema_type,
                definition: req.schema_definition,
                description: req.description,
                created_by: req.created_by,
                tags: req.tags,
            })
            .map_err(to_status)?;
        let r = registered.record;
        if registered.is_new {
            tracing::info!(subject = %r.subject, schema_id = r.schema_id, version = r.version, "schema registered");
            self.state.persist_schema(MetaRecord::Schema(r.clone()));
        }
        Ok(Response::new(RegisterSchemaResponse {
            schema_id: r.schema_id,
            version: r.version,
            is_new_version: registered.is_new,
            fingerprint: r.fingerprint,
        }))
    }

    async fn get_schema(&self, request: Request<GetSchemaRequest>) -> Result<Response<GetSchemaResponse>, Status> {
        let req = request.into_inner();
        let reg = self.state.schemas.lock();
        let (r, mode) = reg.by_id(req.schema_id, req.version).map_err(to_status)?;
        Ok(Response::new(response(r, mode)))
    }

    async fn get_latest_schema(
        &self,
        request: Request<GetLatestSchemaRequest>,
    ) -> Result<Response<GetSchemaResponse>, Status> {
        let req = request.into_inner();
        let reg = self.state.schemas.lock();
        let (r, mode) = reg.version(&req.subject, None).map_err(to_status)?;
        Ok(Response::new(response(r, mode)))
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        let req = request.into_inner();
        let reg = self.state.schemas.lock();
        let versions = reg
            .versions(&req.subject)
            .map_err(to_status)?
            .iter()
            .map(|r| SchemaVersionInfo {
                version: r.version,
                created_at: r.created_at,
                created_by: r.created_by.clone(),
                description: r.description.clone(),
                fingerprint: r.fingerprint.clone(),
                schema_id: r.schema_id,
            })
            .collect();
        Ok(Response::new(ListVersionsResponse { versions }))
    }

    async fn check_compatibility(
        &self,
        request: Request<CheckCompatibilityRequest>,
    ) -> Result<Response<CheckCompatibilityResponse>, Status> {
        let req = request.into_inner();
        let errors = self
            .state
            .schemas
            .lock()
            .check_compatibility(
                &req.subject,
                &req.schema_type,
                &req.new_schema_definition,
                req.compatibility_mode.as_deref(),
            )
            .map_err(to_status)?;
        Ok(Response::new(CheckCompatibilityResponse { is_compatible: errors.is_empty(), errors }))
    }

    async fn delete_schema_version(
        &self,
        request: Request<DeleteSchemaVersionRequest>,
    ) -> Result<Response<DeleteSchemaVersionResponse>, Status> {
        let req = request.into_inner();
        self.state.schemas.lock().delete_version(&req.subject, req.version).map_err(to_status)?;
        Ok(Response::new(DeleteSchemaVersionResponse {
            success: true,
            message: format!("Deleted version {} for subject {} (not persisted)", req.version, req.subject),
        }))
    }

    async fn set_compatibility_mode(
        &self,
        request: Request<SetCompatibilityModeRequest>,
    ) -> Result<Response<SetCompatibilityModeResponse>, Status> {
        let req = request.into_inner();
        let mode = self.state.schemas.lock().set_mode(&req.subject, &req.compatibility_mode).map_err(to_status)?;
        self.state.persist_schema(MetaRecord::CompatMode { subject: req.subject.clone(), mode: mode.clone() });
        Ok(Response::new(SetCompatibilityModeResponse {
            success: true,
            message: format!("Set compatibility mode to {mode} for subject {}", req.subject),
        }))
    }

    async fn configure_topic_schema(
        &self,
        _request: Request<ConfigureTopicSchemaRequest>,
    ) -> Result<Response<ConfigureTopicSchemaResponse>, Status> {
        Err(Status::unimplemented("ConfigureTopicSchema is not supported by danube-dev-broker"))
    }

    async fn update_topic_validation_policy(
        &self,
        _request: Request<UpdateTopicValidationPolicyRequest>,
    ) -> Result<Response<UpdateTopicValidationPolicyResponse>, Status> {
        Err(Status::unimplemented("UpdateTopicValidationPolicy is not supported by danube-dev-broker"))
    }

    async fn get_topic_schema_config(
        &self,
        _request: Request<GetTopicSchemaConfigRequest>,
    ) -> Result<Response<GetTopicSchemaConfigResponse>, Status> {
        Err(Status::unimplemented("GetTopicSchemaConfig is not supported by danube-dev-broker"))
    }

    async fn list_subjects(
        &self,
        _request: Request<ListSubjectsRequest>,
    ) -> Result<Response<ListSubjectsResponse>, Status> {
        let reg = self.state.schemas.lock();
        let subjects = reg
            .subjects()
            .into_iter()
            .map(|(name, r, mode)| SubjectSummary {
                subject: name.to_string(),
                schema_type: r.schema_type.clone(),
                latest_version: r.version,
                compatibility_mode: mode,
                schema_id: r.schema_id,
                tags: r.tags.clone(),
            })
            .collect();
        Ok(Response::new(ListSubjectsResponse { subjects }))
    }
}
