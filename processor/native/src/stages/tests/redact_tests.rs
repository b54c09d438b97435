//! Unit tests of the redactor's rule sets (redact.rs), included from redact.rs.

use super::*;

#[test]
fn a_rule_mask_holds_rules_past_the_64th() {
    let mut mask = RuleMask::default();
    assert!(mask.is_empty() && mask.0.is_empty());
    for rule in [0, 64, 299] {
        mask.set(rule);
    }
    let set: Vec<usize> = (0..400).filter(|r| mask.has(*r)).collect();
    assert_eq!(set, [0, 64, 299]);
    let mut possible = RuleMask::default();
    let mut other = RuleMask::default();
    other.set(70);
    possible.add(&other);
    possible.add(&mask);
    let set: Vec<usize> = (0..400).filter(|r| possible.has(*r)).collect();
    assert_eq!(set, [0, 64, 70, 299]);
}

#[test]
fn value_patterns_that_fit_alone_but_not_together_name_the_second() {
    let wide = r"\w{200}".to_string();
    assert_eq!(value_patterns_problem(vec![wide.clone()]), None);
    let (index, reason) = value_patterns_problem(vec!["a+".into(), wide.clone(), wide]).unwrap();
    assert_eq!(index, 2);
    assert!(reason.contains("size limit"), "{reason}");
    let (index, _) = value_patterns_problem(vec!["ok".into(), "(".into()]).unwrap();
    assert_eq!(index, 1);
}
