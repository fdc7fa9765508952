//! Text handling: splitting streamed LLM tokens into sentences for TTS, and cutting a text to
//! the part a caller heard.

/// Splits streamed text into sentences as tokens arrive, so the first sentence can go to TTS
/// before the model has finished.
///
/// A sentence ends at `.`, `!`, `?`, `…` (or `。！？`) followed by whitespace, or at a line
/// break — but not after a common abbreviation (`Mr.`, `e.g.`, …), and the second and later
/// sentences are at least [`SentenceSplitter::MIN_CHARS`] long (short ones are joined to the
/// next, saving a TTS request each). A run without such a break is cut at `,`/`;`/`:` after
/// [`SentenceSplitter::SOFT_CHARS`] characters, and at a space after
/// [`SentenceSplitter::HARD_CHARS`]. Markdown emphasis and heading marks (`*`, `#`, `` ` ``)
/// are dropped: they would be read out.
#[derive(Debug, Default, Clone)]
pub struct SentenceSplitter {
    buf: String,
    emitted: usize,
}

const ABBREVIATIONS: [&str; 15] = [
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx", "prof", "inc",
    "ltd",
];

impl SentenceSplitter {
    /// Sentences after the first are at least this many characters.
    pub const MIN_CHARS: usize = 12;
    /// Cut at a clause break after this many characters.
    pub const SOFT_CHARS: usize = 120;
    /// Cut at a space after this many characters.
    pub const HARD_CHARS: usize = 240;

    /// A splitter with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Text buffered but not yet emitted.
    pub fn pending(&self) -> &str {
        &self.buf
    }

    /// Sentences emitted so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }

    /// Adds a streamed piece of text; appends every sentence it completes to `out` (trimmed,
    /// never empty).
    pub fn push(&mut self, delta: &str, out: &mut Vec<String>) {
        self.buf
            .extend(delta.chars().filter(|c| !matches!(c, '*' | '#' | '`')));
        while let Some(end) = self.boundary() {
            let rest = self.buf.split_off(end);
            let s = std::mem::replace(&mut self.buf, rest);
            let s = s.trim();
            if !s.is_empty() {
                out.push(s.to_string());
                self.emitted += 1;
            }
        }
    }

    /// The text ended: the rest, if any, is the last sentence.
    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        let s = s.trim();
        if s.is_empty() {
            None
        } else {
            self.emitted += 1;
            Some(s.to_string())
        }
    }

    /// Byte index where the first complete sentence in `buf` ends, if there is one.
    fn boundary(&self) -> Option<usize> {
        let min = if self.emitted == 0 {
            1
        } else {
            Self::MIN_CHARS
        };
        let chars: Vec<(usize, char)> = self.buf.char_indices().collect();
        let mut soft = None;
        let mut last_space = None;
        for (k, &(i, c)) in chars.iter().enumerate() {
            let count = k + 1;
            let next = chars.get(k + 1).map(|&(_, n)| n);
            let end = i + c.len_utf8();
            let long_enough = self.buf[..end].trim().chars().count() >= min;
            if c == '\n' && long_enough && !self.buf[..i].trim().is_empty() {
                return Some(end);
            }
            if matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？') {
                let after_ok = match next {
                    Some(n) => n.is_whitespace(),
                    // At the end of what arrived so far: `!`, `?` and `…` end a sentence; a
                    // `.` only after a plain word (not `3.` of `3.5`, not `U.S.`), so the
                    // sentence goes to TTS without waiting for the next token.
                    None => c != '.' || self.plain_word_before(i),
                };
                let cjk = matches!(c, '。' | '！' | '？');
                if (after_ok || (cjk && next.is_some()))
                    && long_enough
                    && !(c == '.' && self.abbreviation_before(i))
                {
                    return Some(end);
                }
            }
            if c.is_whitespace() {
                last_space = Some(i);
                if k > 0 && matches!(chars[k - 1].1, ',' | ';' | ':') && count >= Self::SOFT_CHARS {
                    soft = Some(i);
                }
            }
            if count >= Self::HARD_CHARS {
                return soft.or(last_space).filter(|&s| s > 0);
            }
        }
        if chars.len() >= Self::SOFT_CHARS {
            return soft;
        }
        None
    }

    fn plain_word_before(&self, dot: usize) -> bool {
        let word: Vec<char> = self.buf[..dot]
            .chars()
            .rev()
            .take_while(|c| !c.is_whitespace())
            .collect();
        word.len() > 1
            && word
                .iter()
                .all(|c| c.is_alphabetic() || *c == '\'' || *c == '’')
    }

    fn abbreviation_before(&self, dot: usize) -> bool {
        let word: String = self.buf[..dot]
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '.')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
            .to_lowercase();
        // Single letters ("J. Smith") and listed abbreviations.
        (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
            || ABBREVIATIONS.contains(&word.as_str())
    }
}

/// The prefix of `text` covering `num / den` of it, cut back to a word boundary (the caller
/// heard that fraction of its audio). `den == 0` or `num >= den` gives the whole text.
pub fn heard_prefix(text: &str, num: u64, den: u64) -> String {
    let text = text.trim();
    if den == 0 || num >= den {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let n = (chars.len() as u128 * num as u128 / den as u128) as usize;
    let mut cut = n.min(chars.len());
    if cut < chars.len() && !chars[cut].is_whitespace() {
        while cut > 0 && !chars[cut - 1].is_whitespace() {
            cut -= 1;
        }
    }
    chars[..cut]
        .iter()
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// How much of a sentence's text goes with the audio received so far: the share of the
/// estimated total duration, cut back to a word boundary, never less than `given` (chars
/// already handed out). Returns the new `given` in chars.
pub fn text_share(text: &str, given: usize, have_us: u64, est_total_us: u64) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let total = est_total_us.max(have_us).max(1);
    let mut cut = ((chars.len() as u128 * have_us as u128) / total as u128) as usize;
    cut = cut.min(chars.len());
    if cut < chars.len() && !chars[cut].is_whitespace() {
        while cut > given && !chars[cut - 1].is_whitespace() {
            cut -= 1;
        }
    }
    cut.max(given)
}

/// Where to resume a sentence whose audio broke off after `have_us` of an estimated
/// `est_total_us` of speech: the share of its characters that audio covers, rounded up and
/// moved on to the end of the word it falls in (a word the caller began hearing is not said
/// again), never before `given` (characters already handed out with audio). A char index;
/// `text`'s length when nothing is left.
pub fn resume_at(text: &str, given: usize, have_us: u64, est_total_us: u64) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len();
    let total = est_total_us.max(have_us).max(1) as u128;
    let mut cut = (len as u128 * have_us as u128).div_ceil(total) as usize;
    cut = cut.min(len).max(given.min(len));
    while cut > 0 && cut < len && !chars[cut - 1].is_whitespace() && !chars[cut].is_whitespace() {
        cut += 1;
    }
    cut
}

/// The characters `from..to` of `text`.
pub fn char_slice(text: &str, from: usize, to: usize) -> String {
    text.chars()
        .skip(from)
        .take(to.saturating_sub(from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_tokens(tokens: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::new();
        let mut out = Vec::new();
        for t in tokens {
            s.push(t, &mut out);
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_as_tokens_arrive() {
        let mut s = SentenceSplitter::new();
        let mut out = Vec::new();
        for t in ["Sure", ".", " Your", " order", " ships", " today", "."] {
            s.push(t, &mut out);
        }
        // A sentence is complete when its final punctuation arrives.
        assert_eq!(out, vec!["Sure.", "Your order ships today."]);
        s.push(" Anything", &mut out);
        assert_eq!(s.finish().as_deref(), Some("Anything"));
        // Not after a number or an initialism: wait for what follows.
        let mut out = Vec::new();
        let mut s = SentenceSplitter::new();
        for t in ["It costs 3", ".", "5 dollars in the U.S", "."] {
            s.push(t, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        s.push(" Next", &mut out);
        assert_eq!(out, vec!["It costs 3.5 dollars in the U.S."]);
    }

    #[test]
    fn abbreviations_numbers_and_short_sentences() {
        assert_eq!(
            split_tokens(&[
                "Dr. Smith",
                " paid $3.50 today. ",
                "Ok. Yes. ",
                "That is all."
            ]),
            vec!["Dr. Smith paid $3.50 today.", "Ok. Yes. That is all."]
        );
        assert_eq!(split_tokens(&["**Hi**!", " # Fine."]), vec!["Hi!", "Fine."]);
        assert_eq!(
            split_tokens(&["one\n", "two three four five\n"]),
            vec!["one", "two three four five"]
        );
        assert!(split_tokens(&["  ", "\n"]).is_empty());
    }

    #[test]
    fn long_runs_are_cut() {
        let long = "word ".repeat(80);
        let out = split_tokens(&[&long]);
        assert!(out.len() >= 2, "{out:?}");
        assert!(
            out.iter()
                .all(|s| s.chars().count() <= SentenceSplitter::HARD_CHARS)
        );
        let clause = format!("{}, and then {}", "a ".repeat(70), "b ".repeat(30));
        let out = split_tokens(&[&clause]);
        assert!(out[0].ends_with(','), "{out:?}");
    }

    #[test]
    fn heard_prefix_cuts_at_words() {
        assert_eq!(heard_prefix("Hello there friend", 1, 2), "Hello");
        assert_eq!(heard_prefix("Hello there friend", 0, 2), "");
        assert_eq!(
            heard_prefix("Hello there friend", 3, 2),
            "Hello there friend"
        );
        assert_eq!(heard_prefix("Hello there friend", 13, 18), "Hello there");
    }

    #[test]
    fn resume_after_the_word_reached() {
        let t = "I'm sorry to hear that.";
        // 100 ms of about 1.6 s: inside "I'm", which is not said again.
        let c = resume_at(t, 0, 100_000, 1_600_000);
        assert_eq!(char_slice(t, c, usize::MAX).trim(), "sorry to hear that.");
        // Half: from the word after the middle.
        let c = resume_at(t, 0, 800_000, 1_600_000);
        assert_eq!(char_slice(t, c, usize::MAX).trim(), "hear that.");
        // Never before what was handed out; nothing left at the end.
        assert_eq!(resume_at(t, 13, 1, 1_600_000), 13);
        assert_eq!(resume_at(t, 0, 2_000_000, 1_600_000), t.chars().count());
    }

    #[test]
    fn text_share_grows_and_never_shrinks() {
        let t = "one two three four";
        let a = text_share(t, 0, 500, 1000);
        assert_eq!(char_slice(t, 0, a), "one two ");
        let b = text_share(t, a, 600, 1000);
        assert_eq!(b, a);
        assert_eq!(text_share(t, a, 2000, 1000), t.chars().count());
    }
}
