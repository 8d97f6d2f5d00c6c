//! The Redis record codec: any stored value is read or refused; a value
//! read back from what a fresh record writes is that record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_edge::affinity::redis_store::record::Stored;

fuzz_target!(|data: (&str, u64)| {
    let (value, now) = data;
    let _ = Stored::parse(value);
    let upstream = value.split(['\t', '/']).next().unwrap_or("");
    if !upstream.is_empty() {
        let stored =
            Stored::parse(&Stored::fresh(upstream, now)).expect("a fresh record reads back");
        assert_eq!(
            (stored.upstream.as_str(), stored.created_ms, stored.requests),
            (upstream, now, 0)
        );
    }
});
