//! HTML writing for the console's server-rendered pages: escaping and the page shell.

/// `s` escaped for HTML text and double- or single-quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title` (escaped here), the stylesheet, the module scripts `scripts` (paths
/// under `/console/assets/`), the navigation and `body` (already HTML).
pub(crate) fn page(title: &str, scripts: &[&str], body: &str) -> String {
    let scripts: String = scripts
        .iter()
        .map(|s| {
            format!(
                "<script type=\"module\" src=\"/console/assets/{}\"></script>",
                esc(s)
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         {scripts}</head><body><nav><a href=\"/phone\">Phone</a> <a href=\"/dashboard\">Calls</a>\
         <form method=\"post\" action=\"/console/logout\"><button type=\"submit\" class=\"link\">\
         Sign out</button></form></nav>\n{body}\n</body></html>\n",
        title = esc(title),
    )
}

/// A UTC time from ms since the Unix epoch: `2026-12-03 10:02:22Z` (the calendar of
/// [`crate::operator::events::rfc3339`]).
pub(crate) fn utc(ms: i64) -> String {
    let r = crate::operator::events::rfc3339(ms);
    format!("{} {}Z", &r[..10], &r[11..19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_292_142_000), "2026-12-03 10:02:22Z");
    }
}
