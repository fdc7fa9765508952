//! Where a call can be handed or placed: E.164 numbers and SIP URIs. One definition for the
//! engine (the cascade's `transfer_call` tool) and the gateway (`POST /calls`, `/voice`,
//! settings).

/// Whether `s` is an E.164 number: `+`, a non-zero digit, 8–15 digits in all (ITU-T E.164;
/// Twilio's `To`/`From` take this form).
pub fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| {
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

/// Whether `n` (trimmed) is somewhere a call can be transferred: an E.164 number
/// ([`is_e164`]) or a `sip:` URI with a host (`sip:user@host`, no whitespace), the two targets
/// of TwiML `<Dial>` (`<Number>`, `<Sip>`).
pub fn is_transfer_target(n: &str) -> bool {
    let n = n.trim();
    match n.strip_prefix("sip:") {
        Some(rest) => rest.contains('@') && !rest.chars().any(char::is_whitespace),
        None => is_e164(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_sip_uris() {
        for ok in [
            "+14155550100",
            "+4930123456",
            " +14155550100 ",
            "sip:agent@example.com",
        ] {
            assert!(is_transfer_target(ok), "{ok}");
        }
        for bad in [
            "14155550100",
            "+04155550100",
            "+1415",
            "+1415555010012345",
            "+1415555o100",
            "sip:agent",
            "sip:a gent@example.com",
            "",
        ] {
            assert!(!is_transfer_target(bad), "{bad}");
        }
        assert!(is_e164("+14155550100") && !is_e164(" +14155550100"));
    }
}
