//! Typed errors, and the one place they become gRPC statuses.
//!
//! Layers return `Error` (or their own enums that convert into it); `From<Error> for Status` is
//! the single mapping. Internal causes are logged here and the client gets a generic message.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed (empty or oversize text, unknown language, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is well formed but not valid in the call's state (utterance before start).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something with this id is already there (a second stream for a live call).
    #[error("{0}")]
    AlreadyExists(String),
    /// Nothing with this id (resume of an unknown call).
    #[error("{0}")]
    NotFound(String),
    /// A bounded resource is full (call table, scoring queue).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The model is not loaded, or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials, but not for this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The model failed on a batch. Logged; the client sees a generic message.
    #[error("model failure: {0}")]
    Model(String),
    /// Anything else inside the server (the incident store, a failed task). Same as `Model`.
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code this error maps to, also used for per-event rejections inside a stream.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::NotFound(_) => Code::NotFound,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Model(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// The message a client may see: internal causes stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Error::Model(cause) | Error::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::new(err.code(), err.public_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_codes_and_hide_internals() {
        let s: Status = Error::InvalidArgument("text is empty".into()).into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "text is empty")
        );
        let s: Status = Error::Model("onnx exploded at node 17".into()).into();
        assert_eq!((s.code(), s.message()), (Code::Internal, "internal error"));
        let s: Status = Error::ResourceExhausted("too many calls".into()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
}
