//! Whether a failed attempt is tried again, and where. One function decides
//! for failures after the connection was made; connect failures always move
//! on (nothing was sent).
//!
//! - **Connect failure** (refused, timed out, TLS): another upstream, within
//!   `failover.max_retries`; the session is re-pinned there.
//! - **The connection failed after the request was (partly) written, and no
//!   response byte has reached the client** (a reset, an early close):
//!   - on a pooled connection, the same upstream once more on a fresh
//!     connection: a relay that closed an idle connection is not at fault.
//!     If the relay is dead that connect fails, and the request moves on;
//!   - on a fresh connection, another upstream: the relay is dying;
//!   - only when the request can be sent again whole (no body, or a body
//!     read early and held), and only when running it twice is harmless: an
//!     idempotent method, or a relay that never had all of it: a failure
//!     while the request was still being written, or a reset with no byte
//!     of answer (a relay that read the whole request and then died would
//!     have closed with a FIN: a reset means unread bytes were left).
//! - **A POST whose relay fails once the request was written whole** is not
//!   retried: the client gets a 502 with an Anthropic-shaped error. The relay
//!   may have run it, and an LLM call run twice is billed twice; the SDKs
//!   retry a 502 themselves, and the next request is placed by health.
//! - **Timeouts waiting for an answer** are not retried: the relay took the
//!   request and is slow, which another relay would not make faster.
//! - **Once any response byte has reached the client**, nothing is retried.
//! - **The client's own failure** (it closed its connection, or its request
//!   could not be read) is never retried and never the relay's fault: a
//!   client that gives up mid-request (Esc in Claude Code, a load tool that
//!   stops) must not move its session, nor count towards ejecting a relay.

use pingora_core::{Error, ErrorSource, ErrorType};

/// What to do after an attempt failed on an established connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSend {
    /// Give up: the client gets the error.
    Fail,
    /// The same upstream again, on a fresh connection.
    SameUpstreamFresh,
    /// Another upstream (the session moves).
    Elsewhere,
}

/// The facts the decision rests on.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Some response was already sent downstream.
    pub responded: bool,
    /// The request can be sent again byte for byte.
    pub replayable: bool,
    pub idempotent: bool,
    /// The failed connection came from the pool.
    pub reused: bool,
    /// This request already had its one fresh-connection retry.
    pub fresh_retried: bool,
}

/// Decide after `error` on an established connection.
pub fn after_send(error: &Error, a: Attempt) -> AfterSend {
    use ErrorType::*;
    if error.esource() == &ErrorSource::Downstream {
        return AfterSend::Fail;
    }
    let lost_connection = matches!(
        error.etype(),
        ConnectionClosed | ReadError | WriteError | WriteTimedout
    );
    let partly_written =
        matches!(error.etype(), WriteError | WriteTimedout) || reset_by_peer(error);
    if a.responded || !a.replayable || !lost_connection || !(a.idempotent || partly_written) {
        AfterSend::Fail
    } else if a.reused && !a.fresh_retried {
        AfterSend::SameUpstreamFresh
    } else {
        AfterSend::Elsewhere
    }
}

/// The connection was reset by the peer (its cause is `ECONNRESET`).
fn reset_by_peer(error: &Error) -> bool {
    error
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[cfg(test)]
mod tests {
    use super::{after_send, AfterSend, Attempt};
    use pingora_core::{Error, ErrorType};

    const GET_ON_POOLED: Attempt = Attempt {
        responded: false,
        replayable: true,
        idempotent: true,
        reused: true,
        fresh_retried: false,
    };

    fn decide(etype: ErrorType, a: Attempt) -> AfterSend {
        after_send(&Error::new(etype), a)
    }

    #[test]
    fn the_table() {
        use AfterSend::*;
        use ErrorType::*;
        let post = Attempt {
            idempotent: false,
            ..GET_ON_POOLED
        };
        let fresh = Attempt {
            reused: false,
            ..GET_ON_POOLED
        };
        let cases = [
            (ConnectionClosed, GET_ON_POOLED, SameUpstreamFresh),
            (ReadError, fresh, Elsewhere),
            (
                ReadError,
                Attempt {
                    fresh_retried: true,
                    ..GET_ON_POOLED
                },
                Elsewhere,
            ),
            (ReadError, post, Fail),
            (ConnectionClosed, post, Fail),
            (WriteError, post, SameUpstreamFresh),
            (
                WriteError,
                Attempt {
                    reused: false,
                    ..post
                },
                Elsewhere,
            ),
            (ReadTimedout, GET_ON_POOLED, Fail),
            (
                ReadError,
                Attempt {
                    responded: true,
                    ..GET_ON_POOLED
                },
                Fail,
            ),
            (
                WriteError,
                Attempt {
                    replayable: false,
                    ..post
                },
                Fail,
            ),
            (InvalidHTTPHeader, GET_ON_POOLED, Fail),
        ];
        let reset = Error::because(
            ReadError,
            "while reading response headers",
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        );
        assert_eq!(after_send(&reset, post), SameUpstreamFresh, "a reset POST");
        // The client closed or failed: whatever the upstream's state, the
        // request is not run again and the upstream is not left.
        for etype in [ConnectionClosed, ReadError, WriteError, ReadTimedout] {
            for attempt in [GET_ON_POOLED, fresh, post] {
                let gone = Error::new(etype.clone()).into_down();
                assert_eq!(
                    after_send(&gone, attempt),
                    Fail,
                    "client {etype:?} {attempt:?}"
                );
            }
        }
        for (etype, attempt, want) in cases {
            assert_eq!(
                decide(etype.clone(), attempt),
                want,
                "{etype:?} {attempt:?}"
            );
        }
    }
}
