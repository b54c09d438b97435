"""Built-in value detectors: a Rust-regex pattern (run by polars) and an optional candidate check.

Patterns are written for the Rust `regex` crate that polars uses: no look-around and no
back-references, which is what keeps matching linear in the length of the value. `(?-u:\\b)` is an
ASCII word boundary: the Unicode one makes the regex engine give up its fast DFA on non-ASCII text.

A check runs in Python, but only on the distinct substrings the pattern matched (a handful per
batch), never on every value. It returns the part of the candidate to redact, or None to leave it:
that lets a pattern over-match a little (a trailing group, a trailing colon) and the check trim it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

Check = Callable[[str], str | None]

B = r"(?-u:\b)"


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: str
    check: Check | None = None
    description: str = ""


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


# (prefixes, allowed lengths) of the card schemes worth catching; a number that fits none of them
# is an order number or a timestamp, even when its Luhn digit happens to work out.
_CARD_SCHEMES: tuple[tuple[tuple[str, ...], frozenset[int]], ...] = (
    (("4",), frozenset({13, 16, 19})),  # Visa
    (tuple(str(p) for p in range(51, 56)), frozenset({16})),  # Mastercard
    (tuple(str(p) for p in range(2221, 2721)), frozenset({16})),  # Mastercard 2-series
    (("34", "37"), frozenset({15})),  # American Express
    (("300", "301", "302", "303", "304", "305", "36", "38", "39"), frozenset({14, 16, 19})),  # Diners
    (("6011", "65", *(str(p) for p in range(644, 650))), frozenset({16, 19})),  # Discover
    (tuple(str(p) for p in range(3528, 3590)), frozenset({16, 19})),  # JCB
    (("62",), frozenset({16, 17, 18, 19})),  # UnionPay
)


def check_card(candidate: str) -> str | None:
    digits = candidate.replace(" ", "").replace("-", "")
    if not digits.isascii() or not digits.isdigit():
        return None
    for prefixes, lengths in _CARD_SCHEMES:
        if len(digits) in lengths and digits.startswith(prefixes):
            return candidate if luhn_valid(digits) else None
    return None


def check_ssn(candidate: str) -> str | None:
    digits = candidate.replace("-", "").replace(" ", "")
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    # Never issued: area 000, 666 or 900-999, group 00, serial 0000.
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return candidate


def check_ipv4(candidate: str) -> str | None:
    parts = candidate.split(".")
    # The pattern takes the whole dotted run, so a version or OID with more parts fails here.
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    if any(len(p) > 1 and p[0] == "0" for p in parts) or any(int(p) > 255 for p in parts):
        return None
    address = ipaddress.IPv4Address(candidate)
    if address.is_loopback or address.is_unspecified:
        return None
    return candidate


def _slice_like(address: str) -> bool:
    """`1::2`, `::10`, `a::b`: what a Python or NumPy slice (`arr[1::2]`) looks like. A person
    writing an address with `::` gives it a hex group (`fe80::1`) or more groups (`2001:db8::1`)."""
    if address.count("::") != 1:
        return False
    groups = [g for side in address.split("::") for g in side.split(":") if g]
    if any(len(side.split(":")) > 1 for side in address.split("::")):
        return False
    return all(g.isdigit() or len(g) <= 2 for g in groups)


def check_ipv6(candidate: str) -> str | None:
    trimmed = candidate.rstrip(":.")
    if trimmed.count(":") < 2 or _slice_like(trimmed):
        return None
    try:
        address = ipaddress.IPv6Address(trimmed)
    except ValueError:
        return None
    # :: and ::1 only (newer Pythons also call ::ffff:127.0.0.1 loopback; the Rust check does not).
    if int(address) in (0, 1):
        return None
    return trimmed


def iban_valid(iban: str) -> bool:
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    # Letters count as two digits (A=10 ... Z=35): int(c, 36) gives exactly that.
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def check_iban(candidate: str) -> str | None:
    # The last group is optional in the pattern and may have swallowed a following short word:
    # try the candidate, then the candidate without its last space-separated group.
    attempt = candidate
    for _ in range(2):
        if iban_valid(attempt.replace(" ", "")):
            return attempt
        head, sep, _tail = attempt.rpartition(" ")
        if not sep:
            return None
        attempt = head
    return None


def check_bearer(candidate: str) -> str | None:
    token = candidate.split(None, 1)[1] if len(candidate.split(None, 1)) == 2 else ""
    # "Bearer authentication" is prose; a credential has a digit, mixed case or token punctuation.
    has_digit = any(c.isdigit() for c in token)
    mixed_case = any(c.islower() for c in token) and any(c.isupper() for c in token)
    has_symbol = any(c in "-._~+/=" for c in token)
    return candidate if has_digit or mixed_case or has_symbol else None


def check_phone(candidate: str) -> str | None:
    digits = sum(c.isdigit() for c in candidate)
    return candidate if 10 <= digits <= 15 else None


def check_google_key(candidate: str) -> str | None:
    return candidate[:39]


def check_url_userinfo(candidate: str) -> str | None:
    """`https://user:pass@`: only the userinfo is redacted, the scheme and host stay readable."""
    start = candidate.find("://") + 3
    userinfo = candidate[start:-1]
    return userinfo if ":" in userinfo else None


_H6 = "[0-9a-f]{1,4}"
# "RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK", ...
_KEY_LABEL = r"[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
_EMAIL_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"

# Order matters: detectors run in this order when the rules list them in it, and a more specific
# key format (Anthropic's sk-ant-) must be masked before the generic one (OpenAI's sk-) sees it.
BUILTIN_DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector(
            "jwt",
            B + r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            description="JSON Web Tokens (header.payload.signature, base64url)",
        ),
        Detector(
            "bearer_token",
            r"(?i)" + B + r"bearer[ \t]+[A-Za-z0-9\-._~+/]{16,}=*",
            check_bearer,
            "'Bearer <token>' credentials of 16+ characters",
        ),
        Detector(
            "private_key",
            # To the END line, or to the end of the value when a log line cut the block short.
            r"(?s)-----BEGIN" + _KEY_LABEL + r".*?(?:-----END" + _KEY_LABEL + r"|$)",
            description="PEM, OpenSSH and PGP private-key blocks, BEGIN to END line",
        ),
        Detector(
            "url_credentials",
            r"(?i)" + B + r"[a-z][a-z0-9+.-]{1,30}://[^\s/?#@:]*:[^\s/?#@]+@",
            check_url_userinfo,
            "user:password in URLs (scheme://user:pass@host): the userinfo is masked",
        ),
        Detector(
            "slack_webhook",
            r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]{20,}",
            description="Slack incoming-webhook and workflow URLs",
        ),
        Detector(
            "slack_token",
            # A workspace or user id (8-13 digits, or one version digit: xoxa-2-, xoxe-1-), then the tail.
            B
            + r"(?:xox[abposre]-(?:[0-9]{8,13}|[0-9])-[A-Za-z0-9-]{18,}"
            + r"|xapp-[0-9]-[A-Z0-9]{8,}-[0-9]{8,}-[A-Za-z0-9]{16,})",
            description="Slack bot, user, app, refresh and legacy tokens (xoxb-, xoxp-, xapp-, ...)",
        ),
        Detector(
            "stripe_key",
            B + r"(?:sk|rk)_(?:live|test|prod)_[0-9A-Za-z]{20,}" + B,
            description="Stripe secret and restricted keys (sk_live_, sk_test_, rk_live_, ...)",
        ),
        Detector(
            "google_api_key",
            # A key may end in "-", after which no word boundary holds: the next character (or the
            # end) is matched instead, and the check cuts it off.
            B + r"AIza[0-9A-Za-z_-]{35}(?:[^0-9A-Za-z_-]|$)",
            check=check_google_key,
            description="Google API keys (AIza + 35 characters)",
        ),
        Detector(
            "anthropic_key",
            B + r"sk-ant-[a-z]{3,8}[0-9]{2}-[A-Za-z0-9_-]{20,}",
            description="Anthropic API keys (sk-ant-api03-...)",
        ),
        Detector(
            "openai_key",
            B + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
            description="OpenAI API keys (sk-..., sk-proj-...)",
        ),
        Detector(
            "aws_access_key",
            B + r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}" + B,
            description="AWS access key ids",
        ),
        Detector(
            "aws_secret_key",
            r"(?i)aws_?secret_?access_?key[\"']?[ \t]*[:=][ \t]*[\"']?[A-Za-z0-9/+]{40}",
            description="AWS secret access keys written as aws_secret_access_key=...",
        ),
        Detector(
            "github_token",
            B + r"(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})" + B,
            description="GitHub personal, OAuth, app and fine-grained tokens",
        ),
        Detector(
            "gitlab_token",
            B + r"(?:glpat|gldt|glrt|glptt|glsoat|glcbt)-[0-9A-Za-z_-]{20,}(?:\.[0-9a-z]{2}[0-9a-z]{7})?",
            description="GitLab personal, deploy, runner, trigger and CI job tokens (glpat-, ...)",
        ),
        Detector(
            "npm_token",
            B + r"npm_[A-Za-z0-9]{36}" + B,
            description="npm access tokens (npm_ + 36 characters)",
        ),
        Detector(
            "huggingface_token",
            B + r"(?:hf|api_org)_[A-Za-z]{34}" + B,
            description="Hugging Face user and organisation tokens (hf_ + 34 letters)",
        ),
        Detector(
            "azure_storage_key",
            r"(?i)" + B + r"(?:AccountKey|SharedAccessKey)=[A-Za-z0-9+/]{20,}={0,2}",
            description="Azure storage and Service Bus keys in connection strings (AccountKey=...)",
        ),
        Detector(
            "azure_sas_token",
            B + r"sig=(?:[A-Za-z0-9+/]|%2[BbFf]){30,}(?:=|%3[Dd]){0,2}",
            description="Azure shared access signatures (the sig= of a SAS token)",
        ),
        Detector(
            "twilio_key",
            B + r"(?:AC|SK)[0-9a-f]{32}" + B,
            description="Twilio account SIDs and API key SIDs (AC/SK + 32 hex)",
        ),
        Detector(
            "sendgrid_key",
            B + r"SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,}",
            description="SendGrid API keys (SG.<id>.<secret>)",
        ),
        Detector(
            "email",
            B + r"[A-Za-z0-9._%+-]+@" + _EMAIL_LABEL + r"(?:\." + _EMAIL_LABEL + r")*\.[A-Za-z]{2,24}" + B,
            description="e-mail addresses with a domain and a top-level domain",
        ),
        Detector(
            "iban",
            B + r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?" + B,
            check_iban,
            "IBANs, grouped or not, with a valid mod-97 check",
        ),
        Detector(
            "credit_card",
            B
            + r"(?:[0-9]{13,19}|[0-9]{4}(?: [0-9]{4}){3}(?: [0-9]{3})?|[0-9]{4}(?:-[0-9]{4}){3}(?:-[0-9]{3})?"
            + r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5})"
            + B,
            check_card,
            "payment card numbers of a known scheme that pass the Luhn check",
        ),
        Detector(
            "us_ssn",
            B + r"(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4})" + B,
            check_ssn,
            "US social security numbers written 123-45-6789 (never-issued ranges excluded)",
        ),
        Detector(
            "phone",
            r"(?:\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){1,5}"
            + r"|(?:\([0-9]{3}\) ?|"
            + B
            + r"[0-9]{3}[-. ])[0-9]{3}[-. ][0-9]{4})"
            + B,
            check_phone,
            "phone numbers in international (+...) or North-American (555) 123-4567 form",
        ),
        Detector(
            "ipv4",
            # The leading word characters make "v1.2.3.4" one candidate, which the check rejects,
            # instead of letting "2.3.4.5" of "v1.2.3.4.5" through as an address.
            # A product token in front ("Chrome/142.0.0.0", RFC 9110 User-Agent) joins the
            # candidate too: a version, not an address.
            B + r"(?:[A-Z][A-Za-z0-9_-]*/)?[A-Za-z0-9_]*[0-9]{1,3}(?:\.[0-9]{1,3}){3,}" + B,
            check_ipv4,
            "IPv4 addresses (loopback and 0.0.0.0 excluded)",
        ),
        Detector(
            "ipv6",
            # Eight groups, or "::" somewhere: "10:30:00" and MAC addresses never even become candidates.
            r"(?i)(?:"
            + B
            + _H6
            + r"(?::"
            + _H6
            + r"){7}|(?:"
            + B
            + _H6
            + r"(?::"
            + _H6
            + r"){0,6})?::(?:"
            + _H6
            + r"(?::"
            + _H6
            + r"){0,6})?)(?:\.[0-9]{1,3}){0,3}",
            check_ipv6,
            "IPv6 addresses, full or compressed (loopback and :: excluded)",
        ),
    )
}
