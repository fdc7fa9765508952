//! Telling a backchannel from a turn by its words: "uh-huh", "okay", "yeah, right" over the
//! agent mean "go on"; "No", "wait", "okay, but…" take the floor.
//!
//! A transcript is a backchannel when, lower-cased with punctuation dropped (hyphens and
//! apostrophes become spaces), its words are nothing but phrases of the list, in any number and
//! order ("okay okay", "uh-huh, right"), or when it has no words at all (a cough, a breath:
//! nothing to answer). Anything else, even one extra word, is a turn.
//!
//! The default list ([`DEFAULT_WORDS`]) is English acknowledgement tokens in their common STT
//! spellings ("uh-huh" as "uh huh", "mm-hmm" as "mhm"). It leaves out "yes" and "no": over a
//! question the agent has not finished they are answers. Operators set their own
//! (`HARK_BACKCHANNEL_WORDS`) for other languages or lines.

/// The default backchannel phrases, lower case, one or two words each (as normalised by
/// [`normalise`]).
pub const DEFAULT_WORDS: &[&str] = &[
    "uh huh",
    "mm hmm",
    "mm hm",
    "mhm",
    "mm",
    "hmm",
    "hm",
    "uh",
    "um",
    "ah",
    "oh",
    "yeah",
    "yep",
    "yup",
    "okay",
    "ok",
    "right",
    "alright",
    "all right",
    "sure",
    "i see",
    "got it",
    "gotcha",
    "exactly",
    "great",
];

/// `text` lower-cased, with every character that is not a letter, a digit or whitespace turned
/// into a space, and runs of spaces collapsed: "Uh-huh." → "uh huh".
pub fn normalise(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `transcript` is a backchannel given the phrases `words` (module docs): only phrases
/// of the list, or no words at all. Phrases are matched whole-word after [`normalise`], the
/// longest first at each position.
pub fn is_backchannel<S: AsRef<str>>(transcript: &str, words: &[S]) -> bool {
    let text = normalise(transcript);
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let phrases: Vec<Vec<String>> = words
        .iter()
        .map(|w| normalise(w.as_ref()))
        .filter(|w| !w.is_empty())
        .map(|w| w.split(' ').map(str::to_string).collect())
        .collect();
    let mut i = 0;
    while i < tokens.len() {
        let longest = phrases
            .iter()
            .filter(|p| {
                p.len() <= tokens.len() - i && p.iter().zip(&tokens[i..]).all(|(a, b)| a == b)
            })
            .map(Vec::len)
            .max();
        match longest {
            Some(n) => i += n,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_in_any_spelling_are_backchannels() {
        for t in [
            "Uh-huh.",
            "mm-hmm",
            "Mhm.",
            "Yeah.",
            "Okay, okay.",
            "OK",
            "Right, right.",
            "Uh huh, yeah.",
            "I see.",
            "All right.",
            "",
            "  ...  ",
        ] {
            assert!(is_backchannel(t, DEFAULT_WORDS), "{t:?}");
        }
    }

    #[test]
    fn words_that_take_the_floor_are_turns() {
        for t in [
            "No.",
            "Wait.",
            "Stop!",
            "Okay, but how much?",
            "Yeah, I want to cancel.",
            "Hold on.",
            "Sorry?",
            "Right away",
            "seeing",
        ] {
            assert!(!is_backchannel(t, DEFAULT_WORDS), "{t:?}");
        }
    }

    #[test]
    fn an_operators_list_replaces_the_default() {
        let words = ["oui", "d'accord", "ah bon"];
        assert!(is_backchannel("Oui, d'accord.", &words));
        assert!(is_backchannel("Ah bon ?", &words));
        assert!(!is_backchannel("Okay.", &words));
        assert!(!is_backchannel("Non.", &words));
    }
}
