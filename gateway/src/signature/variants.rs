//! The URL variants Twilio may have signed (see [`super`]): a URL split into raw slices
//! ([`UrlParts`]), rebuilt with the port as received, stripped or defaulted, the query's `'` raw
//! or `%27`, and for WebSocket upgrades a trailing `/`.

use super::{Matched, PortForm};

/// The first value of query parameter `name` in `url`, raw (not percent-decoded).
pub(super) fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let after = url.split_once('?')?.1;
    let query = after.split_once('#').map_or(after, |(query, _)| query);
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((key, value)) if key == name => Some(value),
            _ => None,
        })
}

/// A URL split into raw slices, so candidates can be rebuilt without re-serialising (a WHATWG
/// parser would lowercase the host, normalise the path and drop default ports, which changes the
/// bytes that were signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UrlParts<'a> {
    /// Without `://`, as received (case preserved).
    scheme: &'a str,
    /// Including the trailing `@`, or empty.
    userinfo: &'a str,
    /// Host name, IPv4 address or bracketed IPv6 address.
    host: &'a str,
    /// The digits after `:`, if a `:` follows the host (possibly empty digits).
    port: Option<&'a str>,
    /// From the end of the authority up to `?` or `#`, possibly empty.
    path: &'a str,
    /// Including the leading `?`, up to `#`, or empty.
    query: &'a str,
    /// Including the leading `#`, or empty.
    fragment: &'a str,
}

impl<'a> UrlParts<'a> {
    /// Splits an absolute `scheme://authority/path?query#fragment` URL; `None` if it is not one
    /// (then only the URL as received is tried).
    fn parse(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return None;
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let (host, port) = if hostport.starts_with('[') {
            let close = hostport.find(']')?;
            let (host, after) = hostport.split_at(close + 1);
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return None,
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
            return None;
        }
        let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
        let (path, after_path) = tail.split_at(path_end);
        let query_end = if after_path.starts_with('?') {
            after_path.find('#').unwrap_or(after_path.len())
        } else {
            0
        };
        let (query, fragment) = after_path.split_at(query_end);
        Some(Self {
            scheme,
            userinfo,
            host,
            port,
            path,
            query,
            fragment,
        })
    }

    /// 443 for `https`/`wss`, 80 for `http`/`ws`, `None` for other schemes.
    fn default_port(&self) -> Option<&'static str> {
        if self.scheme.eq_ignore_ascii_case("https") || self.scheme.eq_ignore_ascii_case("wss") {
            Some("443")
        } else if self.scheme.eq_ignore_ascii_case("http") || self.scheme.eq_ignore_ascii_case("ws")
        {
            Some("80")
        } else {
            None
        }
    }

    /// Reassembles the URL with the given port (`None`: no `:port`), path and query.
    fn build(&self, port: Option<&str>, path: &str, query: &str) -> String {
        let mut out = String::with_capacity(
            self.scheme.len()
                + 3
                + self.userinfo.len()
                + self.host.len()
                + 6
                + path.len()
                + 1
                + query.len(),
        );
        out.push_str(self.scheme);
        out.push_str("://");
        out.push_str(self.userinfo);
        out.push_str(self.host);
        if let Some(port) = port {
            out.push(':');
            out.push_str(port);
        }
        out.push_str(path);
        out.push_str(query);
        out.push_str(self.fragment);
        out
    }
}

/// `url` with its userinfo, if any, replaced by `***@`.
pub(super) fn redact_userinfo(url: &str) -> String {
    match UrlParts::parse(url) {
        Some(parts) if !parts.userinfo.is_empty() => UrlParts {
            userinfo: "***@",
            ..parts
        }
        .build(parts.port, parts.path, parts.query),
        _ => url.to_owned(),
    }
}

/// Every distinct URL variant to try, the URL as received first.
pub(super) fn candidates(url: &str, trailing_slash: bool) -> Vec<Matched> {
    let as_received = Matched {
        url: url.to_owned(),
        port: PortForm::AsReceived,
        apostrophe_encoded: false,
        trailing_slash_added: false,
    };
    let Some(parts) = UrlParts::parse(url) else {
        let mut out = vec![as_received];
        if url.contains('\'') {
            // Unparseable: still try the `%27` form of the whole string.
            out.push(Matched {
                url: url.replace('\'', "%27"),
                apostrophe_encoded: true,
                ..out[0].clone()
            });
        }
        return out;
    };

    let encoded_query = parts.query.replace('\'', "%27");
    let queries: [(&str, bool); 2] = [(parts.query, false), (&encoded_query, true)];

    let slashed_path;
    let mut paths: Vec<(&str, bool)> = vec![(parts.path, false)];
    if trailing_slash && !parts.path.ends_with('/') {
        slashed_path = format!("{}/", parts.path);
        paths.push((&slashed_path, true));
    }

    let ports: [(Option<&str>, PortForm); 3] = [
        (parts.port, PortForm::AsReceived),
        (None, PortForm::Stripped),
        (
            match parts.port {
                Some(port) if !port.is_empty() => Some(port),
                _ => parts.default_port().or(parts.port),
            },
            PortForm::DefaultAdded,
        ),
    ];

    let mut out = vec![as_received];
    for &(path, trailing_slash_added) in &paths {
        for &(port, port_form) in &ports {
            for &(query, apostrophe_encoded) in &queries {
                let url = parts.build(port, path, query);
                if out.iter().all(|c| c.url != url) {
                    out.push(Matched {
                        url,
                        port: port_form,
                        apostrophe_encoded,
                        trailing_slash_added,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_distinct_and_complete() {
        let c = candidates("https://user:pa:ss@h.example:8443/p?q='x'#frag", false);
        let urls: Vec<&str> = c.iter().map(|m| m.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://user:pa:ss@h.example:8443/p?q='x'#frag",
                "https://user:pa:ss@h.example:8443/p?q=%27x%27#frag",
                "https://user:pa:ss@h.example/p?q='x'#frag",
                "https://user:pa:ss@h.example/p?q=%27x%27#frag",
            ]
        );
        // An apostrophe in the path is left alone (WHATWG does not encode it there).
        let c = candidates("https://h/it's?a=1", false);
        assert!(c.iter().all(|m| m.url.contains("it's")));
        assert_eq!(c.len(), 2); // as received, :443 added
    }

    #[test]
    fn ipv6_hosts_and_odd_inputs() {
        let c = candidates("https://[::1]:8443/x", false);
        let urls: Vec<&str> = c.iter().map(|m| m.url.as_str()).collect();
        assert_eq!(urls, ["https://[::1]:8443/x", "https://[::1]/x"]);
        let c = candidates("https://[::1]/x", false);
        let urls: Vec<&str> = c.iter().map(|m| m.url.as_str()).collect();
        assert_eq!(urls, ["https://[::1]/x", "https://[::1]:443/x"]);
        // No path at all: the WebSocket slash variant adds one.
        let c = candidates("wss://h.example", true);
        assert!(
            c.iter()
                .any(|m| m.url == "wss://h.example/" && m.trailing_slash_added)
        );
        // Not a URL: only the string itself.
        assert_eq!(candidates("/relative?x=1", false).len(), 1);
        assert_eq!(candidates("https://h:port/x", false).len(), 1);
        assert_eq!(candidates("", true).len(), 1);
        // Unknown scheme: no default port to add.
        assert_eq!(candidates("ftp://h/x", false).len(), 1);
    }

    #[test]
    fn query_param_lookup() {
        assert_eq!(
            query_param("https://h/p?a=1&bodySHA256=ab#f", "bodySHA256"),
            Some("ab")
        );
        assert_eq!(
            query_param("https://h/p?xbodySHA256=ab", "bodySHA256"),
            None
        );
        assert_eq!(query_param("https://h/p", "bodySHA256"), None);
    }
}
