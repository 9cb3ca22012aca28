//! What a store can fail with, in the room's words.

/// Why a broker call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The shared store cannot be reached; the caller may retry later.
    #[error("the room's store is unavailable: {0}")]
    Unavailable(String),
    /// The room holds `--max-sessions` participants already.
    #[error("the room is full")]
    Full,
}
