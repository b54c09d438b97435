//! Candidate checks of the built-in detectors (processor/stages/redaction/detectors.py), for ASCII candidates.
//!
//! Each mirrors its Python function exactly on ASCII text, which is all the detector patterns
//! match in practice; a candidate with any other character is left to the Python function (its
//! `isdigit`/`islower` are Unicode-aware). Called once per distinct candidate, in microseconds
//! less than a Python call each, so candidates need not be cached across batches.

#[derive(Clone, Copy)]
pub enum Check {
    Card,
    Ssn,
    Phone,
    Ipv4,
    Iban,
    Bearer,
    Ipv6,
    GoogleKey,
    UrlUserinfo,
}

impl Check {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "card" => Check::Card,
            "ssn" => Check::Ssn,
            "phone" => Check::Phone,
            "ipv4" => Check::Ipv4,
            "iban" => Check::Iban,
            "bearer" => Check::Bearer,
            "ipv6" => Check::Ipv6,
            "google_key" => Check::GoogleKey,
            "url_userinfo" => Check::UrlUserinfo,
            _ => return None,
        })
    }

    /// The part of `candidate` to redact (None: leave it), or Err(()) when the candidate is not
    /// ASCII and the Python function must decide.
    pub fn run(self, candidate: &str) -> Result<Option<String>, ()> {
        if !candidate.is_ascii() {
            return Err(());
        }
        // Inputs on which the Python function raises (the patterns never produce them): its error.
        let raises = match self {
            Check::Ssn => !candidate.bytes().any(|b| b != b'-' && b != b' '),
            Check::Iban => !candidate
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b' '),
            _ => false,
        };
        if raises {
            return Err(());
        }
        let accepted = match self {
            Check::Card => card(candidate),
            Check::Ssn => ssn(candidate),
            Check::Phone => {
                (10..=15).contains(&candidate.bytes().filter(u8::is_ascii_digit).count())
            }
            Check::Ipv4 => ipv4(candidate),
            Check::Iban => return Ok(iban(candidate).map(str::to_owned)),
            Check::Bearer => bearer(candidate),
            Check::Ipv6 => return Ok(ipv6(candidate).map(str::to_owned)),
            Check::GoogleKey => return Ok(Some(candidate[..candidate.len().min(39)].to_owned())),
            Check::UrlUserinfo => return Ok(url_userinfo(candidate).map(str::to_owned)),
        };
        Ok(accepted.then(|| candidate.to_owned()))
    }
}

fn luhn_valid(digits: &[u8]) -> bool {
    let total: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, digit)| {
            let value = u32::from(digit - b'0');
            match (index % 2, value * 2) {
                (0, _) => value,
                (_, doubled) if doubled > 9 => doubled - 9,
                (_, doubled) => doubled,
            }
        })
        .sum();
    total.is_multiple_of(10)
}

/// Whether `digits` starts with a number in `low..=high` written with as many digits as `high`.
fn prefix_in(digits: &[u8], low: u32, high: u32) -> bool {
    let width = high.to_string().len();
    digits.len() >= width
        && std::str::from_utf8(&digits[..width])
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| (low..=high).contains(&p))
}

fn card(candidate: &str) -> bool {
    let digits: Vec<u8> = candidate
        .bytes()
        .filter(|b| *b != b' ' && *b != b'-')
        .collect();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| digits.starts_with(p.as_bytes()));
    let range = |low: u32, high: u32| prefix_in(&digits, low, high);
    // (prefix matches, allowed lengths) in the order of detectors._CARD_SCHEMES: the first scheme
    // whose prefix and length fit decides.
    let schemes: [(bool, &[usize]); 8] = [
        (starts(&["4"]), &[13, 16, 19]),
        (range(51, 55), &[16]),
        (range(2221, 2720), &[16]),
        (starts(&["34", "37"]), &[15]),
        (
            starts(&["300", "301", "302", "303", "304", "305", "36", "38", "39"]),
            &[14, 16, 19],
        ),
        (starts(&["6011", "65"]) || range(644, 649), &[16, 19]),
        (range(3528, 3589), &[16, 19]),
        (starts(&["62"]), &[16, 17, 18, 19]),
    ];
    schemes
        .iter()
        .find(|(prefix, lengths)| *prefix && lengths.contains(&digits.len()))
        .is_some_and(|_| luhn_valid(&digits))
}

fn ssn(candidate: &str) -> bool {
    let digits: Vec<u8> = candidate
        .bytes()
        .filter(|b| *b != b'-' && *b != b' ')
        .collect();
    let part = |from: usize, to: usize| &digits[from.min(digits.len())..to.min(digits.len())];
    let (area, group, serial) = (part(0, 3), part(3, 5), &digits[5.min(digits.len())..]);
    // Never issued: area 000, 666 or 900-999, group 00, serial 0000.
    !(area == b"000"
        || area == b"666"
        || area.first() == Some(&b'9')
        || group == b"00"
        || serial == b"0000")
}

fn ipv4(candidate: &str) -> bool {
    let parts: Vec<&str> = candidate.split('.').collect();
    if parts.len() != 4
        || !parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if parts.iter().any(|p| p.len() > 1 && p.starts_with('0')) {
        return false;
    }
    let Some(octets) = parts
        .iter()
        .map(|p| p.parse::<u8>().ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let loopback = octets[0] == 127;
    let unspecified = octets.iter().all(|o| *o == 0);
    !(loopback || unspecified)
}

fn iban_valid(iban: &[u8]) -> bool {
    if !(15..=34).contains(&iban.len())
        || !iban[..2].iter().all(u8::is_ascii_alphabetic)
        || !iban[2..4].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    // Letters count as two digits (A=10 ... Z=35); the remainder is carried digit by digit.
    let mut remainder: u32 = 0;
    for byte in iban[4..].iter().chain(&iban[..4]) {
        let value = match byte {
            b'0'..=b'9' => u32::from(byte - b'0'),
            b'A'..=b'Z' => u32::from(byte - b'A') + 10,
            b'a'..=b'z' => u32::from(byte - b'a') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn iban(candidate: &str) -> Option<&str> {
    // The last group is optional in the pattern and may have swallowed a following short word:
    // try the candidate, then the candidate without its last space-separated group.
    let mut attempt = candidate;
    for _ in 0..2 {
        let compact: Vec<u8> = attempt.bytes().filter(|b| *b != b' ').collect();
        if iban_valid(&compact) {
            return Some(attempt);
        }
        attempt = &attempt[..attempt.rfind(' ')?];
    }
    None
}

fn bearer(candidate: &str) -> bool {
    let trimmed = candidate.trim_start_matches(is_python_space);
    let token = match trimmed.find(is_python_space) {
        Some(end) => trimmed[end..].trim_start_matches(is_python_space),
        None => "",
    };
    // "Bearer authentication" is prose; a credential has a digit, mixed case or token punctuation.
    let has_digit = token.bytes().any(|b| b.is_ascii_digit());
    let mixed_case = token.bytes().any(|b| b.is_ascii_lowercase())
        && token.bytes().any(|b| b.is_ascii_uppercase());
    let has_symbol = token.bytes().any(|b| b"-._~+/=".contains(&b));
    has_digit || mixed_case || has_symbol
}

/// ASCII whitespace as Python's str.split() sees it (\x0b, \x0c and \x1c-\x1f included).
fn is_python_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f'
    )
}

/// `1::2`, `::10`, `a::b`: what a slice looks like (detectors._slice_like).
fn slice_like(address: &str) -> bool {
    let Some((left, right)) = address.split_once("::") else {
        return false;
    };
    if right.contains("::") || left.contains(':') || right.contains(':') {
        return false;
    }
    [left, right]
        .iter()
        .filter(|g| !g.is_empty())
        .all(|g| g.bytes().all(|b| b.is_ascii_digit()) || g.len() <= 2)
}

fn ipv6(candidate: &str) -> Option<&str> {
    let trimmed = candidate.trim_end_matches([':', '.']);
    if trimmed.matches(':').count() < 2 || slice_like(trimmed) {
        return None;
    }
    let address: std::net::Ipv6Addr = trimmed.parse().ok()?;
    (!(address.is_loopback() || address.is_unspecified())).then_some(trimmed)
}

fn url_userinfo(candidate: &str) -> Option<&str> {
    let start = candidate.find("://").map_or(2, |at| at + 3);
    let userinfo = candidate.get(start..candidate.len().checked_sub(1)?)?;
    userinfo.contains(':').then_some(userinfo)
}
