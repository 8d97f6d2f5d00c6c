//! The two line formats, JSON (the default) and nginx's combined format
//! followed by relay-edge's own `key=value` fields, written by
//! [`Formatter`] on the writer's thread, never on the request path.

use super::fields::{
    clf_escape, clf_time, json_str, push_addr, push_affinity, push_int, push_ip, push_ms,
    push_padded, push_session,
};
use super::Entry;
use crate::config::model::AccessLogFormat;
use crate::outcome::StreamOutcome;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats lines into one reused buffer, off the request path. The text of
/// the time is made once a second; numbers are written with `itoa`.
#[derive(Default)]
pub struct Formatter {
    line: String,
    second: Option<u64>,
    /// `2026-12-04T21:19:28` and `04/Dec/2026:21:19:28 +0000` of `second`.
    iso: String,
    clf: String,
}

impl Formatter {
    /// The line of `e` in `format`, with its newline.
    pub fn format(&mut self, e: &Entry, format: AccessLogFormat) -> &str {
        self.line.clear();
        let millis = self.time(e.at);
        match format {
            AccessLogFormat::Json => self.json(e, millis),
            AccessLogFormat::Combined => self.combined(e),
        }
        &self.line
    }

    /// Bring the cached second up to `at`; its milliseconds.
    fn time(&mut self, at: SystemTime) -> u32 {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            self.second = Some(second);
            self.iso = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second))
                .to_string()
                .trim_end_matches('Z')
                .to_string();
            self.clf = clf_time(second);
        }
        since.subsec_millis()
    }

    fn json(&mut self, e: &Entry, millis: u32) {
        let out = &mut self.line;
        out.push_str("{\"time\":\"");
        out.push_str(&self.iso);
        out.push('.');
        push_padded(out, millis as u64, 3);
        out.push_str("Z\",\"client\":");
        match e.client {
            Some(c) => {
                out.push('"');
                push_addr(out, c);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"method\":");
        json_str(out, e.method.as_str());
        out.push_str(",\"path\":");
        json_str(out, e.target());
        out.push_str(",\"status\":");
        push_int(out, e.status);
        out.push_str(",\"upstream\":");
        match &e.upstream {
            Some(u) => json_str(out, u),
            None => out.push_str("null"),
        }
        out.push_str(",\"session\":");
        match e.session {
            Some(s) => {
                out.push('"');
                push_session(out, s);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"affinity\":\"");
        push_affinity(out, e);
        out.push_str("\",\"attempts\":");
        push_int(out, e.attempts);
        out.push_str(",\"bytes_in\":");
        push_int(out, e.bytes_in);
        out.push_str(",\"bytes_out\":");
        push_int(out, e.bytes_out);
        for (name, d) in [
            (",\"upstream_head_ms\":", e.upstream_head),
            (",\"first_event_ms\":", e.first_event),
            (",\"total_ms\":", Some(e.total)),
        ] {
            out.push_str(name);
            match d {
                Some(d) => push_ms(out, d),
                None => out.push_str("null"),
            }
        }
        out.push_str(",\"stream\":");
        match e.stream {
            Some(s) => {
                out.push('"');
                out.push_str(s.label());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        let usage = e.usage;
        for (name, n) in [
            (",\"input_tokens\":", usage.map(|u| u.input)),
            (",\"cache_read_tokens\":", usage.map(|u| u.cache_read)),
            (
                ",\"cache_creation_tokens\":",
                usage.map(|u| u.cache_creation),
            ),
            (",\"output_tokens\":", usage.map(|u| u.output)),
        ] {
            out.push_str(name);
            match n {
                Some(n) => push_int(out, n),
                None => out.push_str("null"),
            }
        }
        out.push_str("}\n");
    }

    /// nginx's combined format, then `key=value` fields (`-` when absent).
    fn combined(&mut self, e: &Entry) {
        let out = &mut self.line;
        match e.client {
            Some(c) => push_ip(out, c.ip()),
            None => out.push('-'),
        }
        out.push_str(" - - [");
        out.push_str(&self.clf);
        out.push_str("] \"");
        out.push_str(e.method.as_str());
        out.push(' ');
        clf_escape(out, e.target());
        out.push(' ');
        out.push_str(match e.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        });
        out.push_str("\" ");
        push_int(out, e.status);
        out.push(' ');
        push_int(out, e.bytes_out);
        for header in [&e.referer, &e.user_agent] {
            out.push_str(" \"");
            match header {
                Some(v) => clf_escape(out, v),
                None => out.push('-'),
            }
            out.push('"');
        }
        out.push_str(" upstream=");
        out.push_str(e.upstream.as_deref().unwrap_or("-"));
        out.push_str(" session=");
        match e.session {
            Some(s) => push_session(out, s),
            None => out.push('-'),
        }
        out.push_str(" affinity=");
        push_affinity(out, e);
        out.push_str(" attempts=");
        push_int(out, e.attempts);
        out.push_str(" bytes_in=");
        push_int(out, e.bytes_in);
        for (name, d) in [
            (" upstream_head_ms=", e.upstream_head),
            (" first_event_ms=", e.first_event),
            (" total_ms=", Some(e.total)),
        ] {
            out.push_str(name);
            match d {
                Some(d) => push_ms(out, d),
                None => out.push('-'),
            }
        }
        out.push_str(" stream=");
        out.push_str(e.stream.map_or("-", StreamOutcome::label));
        for (name, n) in [
            (" cache_read_tokens=", e.usage.map(|u| u.cache_read)),
            (" input_tokens=", e.usage.map(|u| u.input)),
        ] {
            out.push_str(name);
            match n {
                Some(n) => push_int(out, n),
                None => out.push('-'),
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_name_every_field() {
        let line = Formatter::default()
            .format(&Entry::example(), AccessLogFormat::Json)
            .to_string();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["time"], "2026-12-04T21:19:28.000Z");
        assert_eq!(v["client"], "10.0.0.7:51234");
        assert_eq!(v["session"], "abcdef012345");
        assert_eq!(v["affinity"], "moved:draining");
        assert_eq!(v["upstream_head_ms"], 2.5);
        assert_eq!(v["first_event_ms"], serde_json::Value::Null);
        assert_eq!(v["stream"], "completed");
        assert_eq!(v["cache_read_tokens"], 900);
    }

    #[test]
    fn combined_lines_are_nginx_combined_then_fields() {
        let line = Formatter::default()
            .format(&Entry::example(), AccessLogFormat::Combined)
            .to_string();
        assert_eq!(
            line,
            "10.0.0.7 - - [04/Dec/2026:21:19:28 +0000] \"POST /v1/messages HTTP/1.1\" 200 4096 \"-\" \"claude-cli/2.0 \\x22x\\x22\" upstream=relay-a session=abcdef012345 affinity=moved:draining attempts=2 bytes_in=90000 upstream_head_ms=2.500 first_event_ms=- total_ms=40.000 stream=completed cache_read_tokens=900 input_tokens=10\n"
        );
    }
}
