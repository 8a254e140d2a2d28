//! The OpenAI wire surface: chat request inspection and rewrite, client-visible errors, SSE.

pub mod bearer;
pub mod chat;
pub mod error;
pub mod json;
pub mod sse;
