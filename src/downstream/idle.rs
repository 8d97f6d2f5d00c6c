//! A keep-alive connection between two requests, held as the bare gated
//! socket rather than inside Pingora.
//!
//! Pingora waits for a connection's next request inside
//! `HttpProxy::process_new_http`, whose future is boxed whole (about
//! 14.6 KB, pingora-proxy 0.9.1 `src/lib.rs`, `handle_new_request`), beside
//! the new session's 4 KiB head buffer (pingora-core
//! `protocols/http/v1/server.rs`, `read_request`). An idle client would hold
//! both for as long as it is idle. So the edge waits first: for the next
//! request's first bytes ([`GatedStream::poll_read_ahead`]), within the idle
//! timeout Pingora would apply, and until the edge closes its idle
//! connections ([`Closing`]); only then does the connection go back to
//! Pingora, whose first read takes the bytes read ahead.
//!
//! Two facts come from Pingora's settings for the next request
//! (`HttpPersistentSettings`), which have no getters in 0.9.1
//! (pingora-core `src/apps/mod.rs`): its keep-alive timeout, and whether
//! bytes of a pipelined next request were already read. They are read from
//! the settings' `Debug` form ([`between`]); a form that cannot be read
//! sends the connection straight back to Pingora, as before.

use super::gate::GatedStream;
use pingora_core::apps::HttpPersistentSettings;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// What to do with a connection between two requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Between {
    /// Wait here for its next bytes: for at most this long (`None`: no limit).
    Wait(Option<Duration>),
    /// Hand it to Pingora at once: its next request is (partly) read
    /// already, or its settings could not be read.
    Pingora,
}

/// What the settings Pingora carries to a connection's next request allow.
pub fn between(settings: Option<&HttpPersistentSettings>) -> Between {
    let Some(settings) = settings else {
        // None are carried: no pipelined bytes; Pingora's default wait.
        return Between::Wait(None);
    };
    let mut form = Form::default();
    // Stops (with an error) once the form is full: only its start is read.
    let _ = write!(form, "{settings:?}");
    let form = form.text();
    let pipelined = field(form, "pipelined_prefix");
    let keepalive = field(form, "keepalive_timeout");
    match (pipelined, keepalive) {
        // Not kept alive: not reused either; Pingora's to decide.
        (Some("None"), Some("None")) => Between::Pingora,
        // As Pingora reads `Some(0)`: no limit.
        (Some("None"), Some("Some(0)")) => Between::Wait(None),
        (Some("None"), Some(v)) => match v
            .strip_prefix("Some(")
            .and_then(|v| v.strip_suffix(')'))
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(secs) => Between::Wait(Some(Duration::from_secs(secs))),
            None => Between::Pingora,
        },
        _ => Between::Pingora,
    }
}

/// The value of `name` in a derived `Debug` form: up to the next `, ` or
/// ` }` (the values read here hold neither).
fn field<'a>(form: &'a str, name: &str) -> Option<&'a str> {
    let at = form.find(&format!("{name}: "))? + name.len() + 2;
    let rest = &form[at..];
    let end = rest.find([',', ' '])?;
    Some(&rest[..end])
}

/// The start of a `Debug` form, on the stack: the fields read here come
/// before any that may be long (the pipelined bytes themselves).
struct Form {
    bytes: [u8; 512],
    len: usize,
}

impl Default for Form {
    fn default() -> Self {
        Form {
            bytes: [0; 512],
            len: 0,
        }
    }
}

impl Form {
    fn text(&self) -> &str {
        // Only whole `&str`s were copied in.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl Write for Form {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.bytes.len() - self.len;
        if s.len() > room {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// The edge is closing its idle connections (the end of a drain): set once.
#[derive(Default)]
pub struct Closing {
    closed: AtomicBool,
    notify: Notify,
}

impl Closing {
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn closed(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        notified.await
    }
}

/// Wait on `gated` for the client's next bytes, for at most `idle`, and
/// read them ahead. True: they came; false: the connection is to be closed
/// (the client closed it or failed, it stayed idle too long, or the edge is
/// closing its idle connections).
pub async fn next_bytes(
    gated: &mut GatedStream,
    idle: Option<Duration>,
    closing: &Closing,
) -> bool {
    use futures::FutureExt;
    let came = |r: std::io::Result<usize>| matches!(r, Ok(n) if n > 0);
    // A client that already sent costs no more than a read.
    if let Some(read) = std::future::poll_fn(|cx| gated.poll_read_ahead(cx)).now_or_never() {
        return came(read);
    }
    gated.release_buffers();
    let read = std::future::poll_fn(|cx| gated.poll_read_ahead(cx));
    let within = async {
        match idle {
            Some(d) => tokio::time::timeout(d, read).await.ok(),
            None => Some(read.await),
        }
    };
    tokio::select! {
        biased;
        read = within => read.is_some_and(came),
        _ = closing.closed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pingora_core::protocols::http::ServerSession;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;

    /// Pingora's settings for the next request of a session kept alive for
    /// `keepalive`, with `pipelined` bytes of the next request read.
    async fn settings(keepalive: Option<u64>, pipelined: &[u8]) -> HttpPersistentSettings {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener");
        let addr = listener.local_addr().expect("its address");
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to it");
        let mut session = ServerSession::new_http1(Box::new(L4Stream::from(tcp)));
        session.set_keepalive(keepalive);
        let mut settings = HttpPersistentSettings::for_session(&session);
        if !pipelined.is_empty() {
            settings.set_pipelined_prefix(BytesMut::from(pipelined));
        }
        settings
    }

    #[tokio::test]
    async fn the_wait_between_requests_is_read_from_pingoras_settings() {
        let long = vec![b'x'; 100_000];
        let cases: [(Option<u64>, &[u8], Between); 7] = [
            (Some(60), b"", Between::Wait(Some(Duration::from_secs(60)))),
            (Some(1), b"", Between::Wait(Some(Duration::from_secs(1)))),
            (Some(0), b"", Between::Wait(None)),
            (None, b"", Between::Pingora),
            (Some(60), b"GET / HTTP/1.1\r\n", Between::Pingora),
            (Some(0), b"G", Between::Pingora),
            (Some(60), &long, Between::Pingora),
        ];
        for (keepalive, pipelined, want) in cases {
            let s = settings(keepalive, pipelined).await;
            assert_eq!(
                between(Some(&s)),
                want,
                "keepalive {keepalive:?}, {} bytes pipelined",
                pipelined.len()
            );
        }
        assert_eq!(between(None), Between::Wait(None));
    }

    #[test]
    fn an_unreadable_form_goes_to_pingora() {
        assert_eq!(field("S { a: Some(3), b: None }", "a"), Some("Some(3)"));
        assert_eq!(field("S { a: Some(3), b: None }", "b"), Some("None"));
        assert_eq!(field("S { a: Some(3) }", "c"), None);
    }
}
