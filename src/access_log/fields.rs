//! How each field of a line is written: numbers with `itoa`, times,
//! addresses, the session's hash prefix, the affinity outcome, and text
//! escaped for JSON or for the combined format, so that one line stays one
//! line whatever a client sends.

use super::Entry;
use crate::affinity::SessionId;
use crate::outcome::AffinityOutcome;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

pub(super) fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `n` with at least `width` digits.
pub(super) fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n);
    for _ in text.len()..width {
        out.push('0');
    }
    out.push_str(text);
}

/// Milliseconds with microseconds: `2.500`.
pub(super) fn push_ms(out: &mut String, d: Duration) {
    let micros = d.as_micros() as u64;
    push_int(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

pub(super) fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_int(out, octet);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip:port`, or `[ip]:port`.
pub(super) fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(_) => push_ip(out, addr.ip()),
        SocketAddr::V6(_) => {
            out.push('[');
            push_ip(out, addr.ip());
            out.push(']');
        }
    }
    out.push(':');
    push_int(out, addr.port());
}

/// The first 12 hex digits of the session's keyed hash: enough to grep one
/// session's lines, never the key itself.
pub(super) fn push_session(out: &mut String, id: SessionId) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let top = (id.0 >> 80) as u64;
    for i in (0..12).rev() {
        out.push(HEX[((top >> (4 * i)) & 0xf) as usize] as char);
    }
}

/// `hit`, `new`, `moved:<reason>`, or `none` without a session key.
pub(super) fn push_affinity(out: &mut String, e: &Entry) {
    match (e.affinity, e.moved_reason) {
        (None, _) => out.push_str("none"),
        (Some(AffinityOutcome::Moved), Some(reason)) => {
            out.push_str("moved:");
            out.push_str(reason.label());
        }
        (Some(outcome), _) => out.push_str(outcome.label()),
    }
}

/// Needs no escaping, in JSON or in the combined format.
fn plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

/// `"text"`, escaped for JSON.
pub(super) fn json_str(out: &mut String, text: &str) {
    out.push('"');
    if text.bytes().all(plain) {
        out.push_str(text);
    } else {
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// A client's text inside quotes: `"`, `\` and bytes outside printable
/// ASCII escaped as nginx does (`\xHH`), so that one line stays one line.
pub(super) fn clf_escape(out: &mut String, text: &str) {
    if text.bytes().all(plain) {
        out.push_str(text);
        return;
    }
    for b in text.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// `04/Dec/2026:21:19:28 +0000`, in UTC, for seconds since the epoch.
pub(super) fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_stays_on_one_line_in_both_formats() {
        let text = "/v1/\"quoted\"\\back\nnew\u{1}line\u{7f}é";
        let mut json = String::new();
        json_str(&mut json, text);
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v, text);
        let mut clf = String::new();
        clf_escape(&mut clf, text);
        assert_eq!(
            clf,
            "/v1/\\x22quoted\\x22\\x5Cback\\x0Anew\\x01line\\x7F\\xC3\\xA9"
        );
    }

    #[test]
    fn civil_dates_across_leap_years() {
        let at = clf_time;
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(1_709_251_199), "29/Feb/2024:23:59:59 +0000");
    }
}
