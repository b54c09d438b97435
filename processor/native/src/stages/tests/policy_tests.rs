//! Unit tests of the policy plan's check sets and verdicts (policy.rs), included from policy.rs.

use super::*;

fn verdicts(modes: &[u8]) -> Verdicts {
    let checks = modes
        .iter()
        .enumerate()
        .map(|(k, mode)| (format!("c{k}"), *mode, format!("r{k}")))
        .collect::<Vec<_>>();
    // Most severe first: by mode, then as listed.
    let mut order: Vec<usize> = (0..checks.len()).collect();
    order.sort_by_key(|k| modes[*k]);
    let words = (
        "BLOCKED".to_string(),
        "WARNING".to_string(),
        "ALLOWED".to_string(),
        "warned".to_string(),
    );
    Verdicts {
        checks,
        order,
        words,
    }
}

#[test]
fn bits_hold_any_number_of_checks() {
    let mut bits = Bits::with_capacity(300);
    for bit in [0, 63, 64, 127, 128, 299] {
        bits.set(bit);
    }
    let set: Vec<usize> = (0..300).filter(|b| bits.get(*b)).collect();
    assert_eq!(set, [0, 63, 64, 127, 128, 299]);
    // Up to 64 checks, nothing is allocated per span.
    assert!(Bits::with_capacity(64).more.is_empty());
    assert_eq!(Bits::with_capacity(65).more.len(), 1);
}

#[test]
fn equal_sets_are_one_code() {
    let mut a = Bits::with_capacity(200);
    let mut b = Bits::with_capacity(200);
    a.set(150);
    b.set(150);
    assert!(a == b);
    b.set(3);
    assert!(a != b);
}

#[test]
fn a_verdict_past_the_64th_check_names_it_and_takes_its_mode() {
    // 99 audit-only checks, then an enforced one: bit k + 1 is check k, bit 0 "warned".
    let mut modes = vec![2u8; 99];
    modes.push(0);
    let table = verdicts(&modes);
    let mut code = Bits::with_capacity(101);
    code.set(5 + 1);
    code.set(99 + 1);
    let verdict = table.verdict(&code);
    assert_eq!(verdict.violated, [5, 99]);
    assert_eq!(table.result(&verdict), "BLOCKED");
    assert_eq!(table.reason(&verdict), Some("r99"));
}

#[test]
fn an_allowed_verdict_has_no_reason_and_a_warned_one_the_budget_warning() {
    let table = verdicts(&[2, 1]);
    let mut audit_only = Bits::with_capacity(3);
    audit_only.set(1);
    let verdict = table.verdict(&audit_only);
    assert_eq!(
        (table.result(&verdict), table.reason(&verdict)),
        ("ALLOWED", None)
    );
    let mut warned = Bits::with_capacity(3);
    warned.set(0);
    let verdict = table.verdict(&warned);
    assert!(verdict.violated.is_empty());
    assert_eq!(
        (table.result(&verdict), table.reason(&verdict)),
        ("WARNING", Some("warned"))
    );
}

#[test]
fn utc_text_is_gmtime_formatted() {
    // Expected values from Python's time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s)).
    for (second, text) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (951_868_799, "2000-02-29T23:59:59Z"),
        (4_107_542_400, "2100-03-01T00:00:00Z"),
        (1_796_688_007, "2026-12-08T00:00:07Z"),
        (1_765_238_399, "2025-12-08T23:59:59Z"),
    ] {
        assert_eq!(utc_text(second), text);
    }
}
