//! How much of a relay's cap one edge may hold (leased grants, as in
//! Doorman): what it wants, but at least its fair share or what it already
//! has in flight, and never more than the others leave.

/// One edge's grant of a relay whose cap is `cap`: `want` is what it would
/// use now (in flight and queued), `in_flight` what it already holds,
/// `edges` how many edges want some of the cap now (this one included; an
/// idle edge is not counted), and `others`
/// the sum of the other edges' grants. Never more than the others leave,
/// so the edges' grants together never pass the cap.
pub fn grant(cap: u32, want: u32, in_flight: u32, edges: u32, others: u32) -> u32 {
    let fair = cap / edges.max(1);
    let left = cap.saturating_sub(others);
    want.min(fair.max(in_flight)).min(left)
}

#[cfg(test)]
mod tests {
    use super::grant;

    /// Each case: cap, want, in flight, edges, the others' grants, and
    /// the grant.
    #[test]
    fn a_grant_is_what_is_wanted_within_the_fair_share_and_what_is_left() {
        let cases = [
            ("alone, wanting less than the cap", 8, 3, 0, 1, 0, 3),
            ("alone, wanting more than the cap", 8, 20, 0, 1, 0, 8),
            ("two edges, both busy: half each", 8, 20, 0, 2, 4, 4),
            (
                "the other edge idle, so not counted: all of it",
                8,
                20,
                0,
                1,
                0,
                8,
            ),
            ("keeps what it holds above its share", 8, 20, 6, 2, 2, 6),
            ("never past what the others leave", 8, 20, 6, 2, 4, 4),
            ("the others hold it all", 8, 5, 0, 2, 8, 0),
            (
                "the others hold more than the cap (a shrunk cap)",
                4,
                5,
                0,
                2,
                9,
                0,
            ),
            ("wants nothing: idle", 8, 0, 0, 2, 0, 0),
            ("no edges counted yet", 8, 3, 0, 0, 0, 3),
            ("a cap of zero", 0, 3, 0, 1, 0, 0),
            ("three edges, fair share rounds down", 10, 9, 0, 3, 6, 3),
        ];
        for (name, cap, want, in_flight, edges, others, expected) in cases {
            assert_eq!(
                grant(cap, want, in_flight, edges, others),
                expected,
                "{name}"
            );
        }
    }
}
