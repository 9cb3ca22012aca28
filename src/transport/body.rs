//! Reading a request's body under a limit.

use axum::body::Body;
use bytes::Bytes;

use crate::error::AppError;

/// Reads a whole request body, refusing more than `limit` bytes.
///
/// # Errors
/// [`AppError::TooLarge`] over the limit; [`AppError::BadRequest`] for a body that cannot be read (a malformed
/// chunked encoding).
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, AppError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        // Only the limit is a 413; a body that could not be read (a malformed chunked encoding, a connection
        // cut mid-body) is a bad request.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(cause) = source {
            if cause.is::<http_body_util::LengthLimitError>() {
                return AppError::TooLarge(limit);
            }
            source = cause.source();
        }
        AppError::BadRequest(format!("the request body could not be read: {error}"))
    })
}
