//! The request-head scanner: fed in any pieces, it finds the same end as
//! httparse does on the whole, and never lets a head past its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_edge::downstream::head::{HeadScan, Verdict};

const MAX_HEAD: usize = 512;
const MAX_URI: usize = 128;

fuzz_target!(|data: (u8, &[u8])| {
    let (piece, bytes) = data;
    let piece = usize::from(piece.max(1));
    let mut scan = HeadScan::new(MAX_HEAD, MAX_URI);
    let mut fed = 0;
    let mut verdict = Verdict::Incomplete;
    for chunk in bytes.chunks(piece) {
        verdict = scan.feed(chunk);
        match verdict {
            Verdict::Incomplete => fed += chunk.len(),
            Verdict::Complete(n) => {
                fed += n;
                break;
            }
            _ => break,
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(bytes);
    match verdict {
        Verdict::Complete(_) => {
            assert!(fed <= MAX_HEAD);
            // Where httparse finds a whole head, it ends exactly there.
            if let Ok(httparse::Status::Complete(end)) = parsed {
                assert_eq!(end, fed, "head end");
            }
        }
        Verdict::Incomplete => {
            assert!(fed <= MAX_HEAD);
            // httparse finds no whole head in what the scanner called incomplete.
            assert!(
                !matches!(parsed, Ok(httparse::Status::Complete(_))),
                "missed end"
            );
        }
        Verdict::TooLarge | Verdict::UriTooLong => {}
    }
});
