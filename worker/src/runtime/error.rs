//! Errors at the protocol boundary. The engine returns the shared, typed
//! [`ProtocolError`] (a stable code and a message); [`Coded`] attaches the code to an internal
//! error where it arises, so nothing is recovered later by downcasting.

use htc_shared::protocol::{ErrorCode, ProtocolError};

/// Turns any error into a [`ProtocolError`] with the given code, keeping its whole message
/// chain (`a: b: c`).
pub trait Coded<T> {
    fn coded(self, code: ErrorCode) -> Result<T, ProtocolError>;
}

impl<T, E: Into<anyhow::Error>> Coded<T> for Result<T, E> {
    fn coded(self, code: ErrorCode) -> Result<T, ProtocolError> {
        self.map_err(|e| ProtocolError::new(code, format!("{:#}", e.into())))
    }
}
