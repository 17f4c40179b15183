//! URL templates: `https://hooks.example.com/{namespace}/{topic_name}/{attr.tenant}?key={key}`,
//! in the grammar every connector shares ([`danube_connect_core::template`]).
//!
//! Placeholders are filled per record and percent-encoded (only RFC 3986 unreserved
//! characters stay as they are), so a record can pick its path but not its scheme or,
//! unless the host itself is templated, its host.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use danube_connect_core::template::{MissingField, RecordField, Template};
use danube_connect_core::SinkRecord;

/// Everything but RFC 3986 unreserved characters is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why `{topic}` is refused in a URL (for now): its meaning changed.
const TOPIC_CHANGED: &str = "in the HTTP sink `{topic}` was `namespace/name`; in every template it is now the \
                             topic's name alone, so it is refused here until configurations are updated: write \
                             `{namespace}/{topic_name}` for the old URL, or `{topic_name}` for the name";

/// Why a template is not acceptable at start.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Not a template of the shared grammar, or a placeholder that is not a record field.
    #[error(transparent)]
    Syntax(#[from] danube_connect_core::template::TemplateError),
    /// The URL (with sample values) does not parse. It is shown redacted: its path or
    /// query may hold a secret.
    #[error("`{url}` is not a valid URL")]
    Url {
        /// The URL with sample values, path and query redacted ([`redact_url`]).
        url: String,
        /// The parse error.
        #[source]
        source: url::ParseError,
    },
    /// Not `http` or `https`.
    #[error("scheme `{0}` is not supported; use http:// or https://")]
    Scheme(String),
    /// No host.
    #[error("the URL has no host")]
    NoHost,
}

/// Why a URL could not be made for one record.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The record lacks the key or attribute the template names.
    #[error("no value for the URL template")]
    Missing(#[source] MissingField),
    /// The filled-in URL does not parse.
    #[error("the URL made for this record is not valid")]
    Url(#[source] url::ParseError),
}

/// A parsed URL template (the shared grammar, [`danube_connect_core::template`], with the
/// record's fields). Its `Debug` output shows the redacted URL only.
#[derive(Clone)]
pub struct UrlTemplate {
    template: Template<RecordField>,
    /// The URL when the template has no placeholder.
    fixed: Option<Url>,
    host_is_static: bool,
    sample: Url,
}

impl UrlTemplate {
    /// Parses and checks a template: scheme http(s), a host, known placeholders.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let template = Template::parse(text, |placeholder| {
            if placeholder.name == "topic" {
                return Err(TOPIC_CHANGED.to_string());
            }
            RecordField::parse_plain(placeholder)
        })?;
        let sample_text = template.sample("x");
        let sample =
            Url::parse(&sample_text).map_err(|source| TemplateError::Url { url: redact_url(&sample_text), source })?;
        if !matches!(sample.scheme(), "http" | "https") {
            return Err(TemplateError::Scheme(sample.scheme().to_string()));
        }
        if sample.host_str().is_none_or(str::is_empty) {
            return Err(TemplateError::NoHost);
        }
        let host_is_static = host_span(text).is_some_and(|host| !host.contains('{'));
        let fixed = template.is_static().then(|| sample.clone());
        Ok(Self { template, fixed, host_is_static, sample })
    }

    /// The host when no placeholder is in it (checked once at start by the SSRF guard).
    pub fn static_host(&self) -> Option<url::Host<String>> {
        if self.host_is_static {
            self.sample.host().map(|h| h.to_owned())
        } else {
            None
        }
    }

    /// Whether every record goes to the same URL.
    pub fn is_fixed(&self) -> bool {
        self.fixed.is_some()
    }

    /// The URL for `record`: each value percent-encoded (only RFC 3986 unreserved
    /// characters stay as they are).
    pub fn render(&self, record: &SinkRecord) -> Result<Url, RenderError> {
        if let Some(url) = &self.fixed {
            return Ok(url.clone());
        }
        let out = self
            .template
            .render(|field, out| {
                out.extend(utf8_percent_encode(&field.value(record)?, COMPONENT));
                Ok(())
            })
            .map_err(RenderError::Missing)?;
        Url::parse(&out).map_err(RenderError::Url)
    }
}

impl std::fmt::Debug for UrlTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlTemplate").field("url", &redact_url(self.sample.as_str())).finish_non_exhaustive()
    }
}

/// What logs, errors and `--check` show of a URL: scheme and authority, with any
/// `user:password@` replaced, and `/<redacted>` for a path or query (Slack-style incoming
/// webhooks carry their secret in the path, others in the query).
///
/// Works on text that is not a valid URL too (a template, a URL that did not parse).
pub fn redact_url(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(i) => (&text[..i + 3], &text[i + 3..]),
        None if text.is_empty() => return String::new(),
        None => return REDACTED.to_string(),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let tail = if tail.is_empty() || tail == "/" { tail.to_string() } else { format!("/{REDACTED}") };
    format!("{scheme}{authority}{tail}")
}

const REDACTED: &str = "<redacted>";

/// `scheme://host:port` followed by `/` for the root path or `/<redacted>` for any other
/// path or a query: what errors, logs and dead-letter records show of a request target.
pub fn target_of(url: &Url) -> String {
    let tail = if url.path() == "/" && url.query().is_none() { "/" } else { "/<redacted>" };
    format!("{}{tail}", endpoint_of(url))
}

/// The authority part of a URL template (between `://` and the next `/`, `?` or `#`).
fn host_span(template: &str) -> Option<&str> {
    let start = template.find("://")? + 3;
    let rest = &template[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `scheme://host:port`: the circuit-breaker key and what logs show of a target.
pub fn endpoint_of(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SinkRecord {
        let mut r = SinkRecord::new("/default/orders", 7, "x");
        r.routing_key = Some("a b/c".into());
        r.attributes.insert("tenant".into(), "acme&co".into());
        r
    }

    #[test]
    fn placeholders_are_filled_and_encoded() {
        let t = UrlTemplate::parse(
            "https://h.example/{namespace}/{topic_name}/{attr.tenant}/{attributes.tenant}?k={key}&o={offset}",
        )
        .expect("parse");
        let url = t.render(&record()).expect("render");
        assert_eq!(url.as_str(), "https://h.example/default/orders/acme%26co/acme%26co?k=a%20b%2Fc&o=7");
        assert!(!t.is_fixed());
        assert_eq!(t.static_host().map(|h| h.to_string()).as_deref(), Some("h.example"));
    }

    #[test]
    fn missing_attribute_is_named() {
        let t = UrlTemplate::parse("http://h/{attr.region}").expect("parse");
        let err = t.render(&record()).expect_err("missing");
        let chain = danube_connect_core::error::error_chain(&err);
        assert!(chain.contains("region"), "{chain}");
    }

    #[test]
    fn topic_whose_meaning_changed_is_refused_with_the_new_spelling() {
        let err = UrlTemplate::parse("https://h.example/{topic}").expect_err("refused");
        assert!(err.to_string().contains("{namespace}/{topic_name}"), "{err}");
    }

    #[test]
    fn templated_host_is_not_static() {
        let t = UrlTemplate::parse("http://{attr.tenant}.hooks.example/x").expect("parse");
        assert!(t.static_host().is_none());
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(matches!(UrlTemplate::parse("http://h/{topic_name"), Err(TemplateError::Syntax(_))));
        assert!(matches!(UrlTemplate::parse("http://h/{what}"), Err(TemplateError::Syntax(_))));
        assert!(matches!(UrlTemplate::parse("mailto:a@b"), Err(TemplateError::Scheme(_))));
        assert!(UrlTemplate::parse("not a url").is_err());
    }

    #[test]
    fn redaction_keeps_scheme_and_host_and_hides_path_query_and_userinfo() {
        let slack = "https://hooks.slack.com/services/T0001/B0001/s3cr3tPath";
        assert_eq!(redact_url(slack), "https://hooks.slack.com/<redacted>");
        assert_eq!(redact_url("http://h:8080/x?token=s3cr3t"), "http://h:8080/<redacted>");
        assert_eq!(redact_url("http://h:8080?token=s3cr3t"), "http://h:8080/<redacted>");
        assert_eq!(redact_url("https://user:pw@h.example/"), "https://<redacted>@h.example/");
        assert_eq!(redact_url("https://h.example"), "https://h.example");
        assert_eq!(redact_url("not a url with s3cr3t"), "<redacted>");
        assert_eq!(redact_url(""), "");
        let url = Url::parse(slack).expect("url");
        assert_eq!(target_of(&url), "https://hooks.slack.com:443/<redacted>");
        assert_eq!(target_of(&Url::parse("http://h/").expect("url")), "http://h:80/");
        let template = UrlTemplate::parse("https://hooks.slack.com/services/{attr.team}/s3cr3tPath").expect("parse");
        assert!(!format!("{template:?}").contains("s3cr3t"), "{template:?}");
        let err = UrlTemplate::parse("http://h:99999999/s3cr3t").expect_err("bad port");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn endpoint_has_scheme_host_and_port() {
        let url = Url::parse("https://h.example/a?b=c").expect("url");
        assert_eq!(endpoint_of(&url), "https://h.example:443");
    }
}
