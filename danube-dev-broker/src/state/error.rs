//! Errors of broker operations and their gRPC status codes.

use super::*;

/// Errors of broker operations, mapped to gRPC status codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("The topic: {0} has an invalid format, should be: /namespace_name/topic_name")]
    InvalidTopic(String),
    #[error(
        "Cannot create topic '{topic}': partitioned topics with this base name already exist (found {found} partitions). Delete the partitioned topics first."
    )]
    PrefixTaken { topic: String, found: usize },
    #[error(
        "Cannot create partitioned topic '{topic}': a non-partitioned topic '{base}' already exists. Delete the non-partitioned topic first."
    )]
    BaseTaken { topic: String, base: String },
    #[error("Producer requested dispatch strategy does not match topic strategy")]
    DispatchMismatch,
    #[error("Unable to find the namespace {0}")]
    NamespaceNotFound(String),
    #[error("topic {0} not found")]
    TopicNotFound(String),
    #[error("The producer with id {0} does not exist")]
    ProducerNotFound(u64),
    #[error("The consumer with the id {0} does not exist")]
    ConsumerNotFound(u64),
    #[error("subscription {sub} not found on topic {topic}")]
    SubscriptionNotFound { topic: String, sub: String },
    #[error("schema subject '{0}' is not registered")]
    SchemaSubjectMissing(String),
    #[error(
        "Not able to subscribe to the topic {topic}: subscription {sub} is exclusive and held by consumer '{holder}'"
    )]
    ExclusiveBusy { topic: String, sub: String, holder: String },
    #[error("message of {size} bytes exceeds the maximum message size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("invalid subscription type {0}")]
    InvalidSubType(i32),
    #[error("invalid dispatch strategy {0}")]
    InvalidDispatch(i32),
    #[error("broker unavailable (injected failure)")]
    InjectedFailure,
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl From<StateError> for Status {
    fn from(e: StateError) -> Status {
        let msg = e.to_string();
        match e {
            StateError::InvalidTopic(_)
            | StateError::TooLarge { .. }
            | StateError::InvalidSubType(_)
            | StateError::InvalidDispatch(_) => Status::invalid_argument(msg),
            StateError::NamespaceNotFound(_) | StateError::InjectedFailure => Status::unavailable(msg),
            StateError::TopicNotFound(_)
            | StateError::ProducerNotFound(_)
            | StateError::ConsumerNotFound(_)
            | StateError::SubscriptionNotFound { .. } => Status::not_found(msg),
            StateError::SchemaSubjectMissing(_) | StateError::DispatchMismatch => Status::failed_precondition(msg),
            StateError::PrefixTaken { .. } | StateError::BaseTaken { .. } => Status::already_exists(msg),
            StateError::ExclusiveBusy { .. } => Status::permission_denied(msg),
            StateError::Schema(s) => match s {
                SchemaError::Incompatible { .. } => Status::failed_precondition(msg),
                SchemaError::SubjectNotFound(_) | SchemaError::IdNotFound(_) | SchemaError::VersionNotFound { .. } => {
                    Status::not_found(msg)
                }
                SchemaError::UnknownType(_) | SchemaError::InvalidDefinition { .. } | SchemaError::InvalidMode(_) => {
                    Status::invalid_argument(msg)
                }
            },
        }
    }
}
