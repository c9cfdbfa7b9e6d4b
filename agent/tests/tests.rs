//! x
#![allow(unreachable_pub, clippy::unwrap_used, missing_docs)]
