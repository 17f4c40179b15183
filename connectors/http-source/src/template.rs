//! Path templates (`/github/{repo}`, a route pattern) and topic templates
//! (`/default/github-{header.X-GitHub-Event}`, the grammar every connector shares:
//! `docs/templates.md`).

use axum::http::HeaderMap;
use danube_connect_core::template::Template;

/// Longest value a placeholder may put into a topic name.
const MAX_VALUE_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A request path pattern: literal segments and `{name}` segments (one segment each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

/// Path segment values captured by a match, in template order.
pub type PathParams = Vec<(String, String)>;

impl PathTemplate {
    /// Parses a template; the error says what is wrong.
    pub fn parse(template: &str) -> Result<Self, String> {
        let Some(rest) = template.strip_prefix('/') else {
            return Err(format!("`{template}` must start with /"));
        };
        if rest.is_empty() {
            return Err("must have at least one segment (e.g. /webhooks)".into());
        }
        let mut segments = Vec::new();
        let mut names = Vec::new();
        for part in rest.split('/') {
            if part.is_empty() {
                return Err(format!("`{template}` has an empty segment"));
            }
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if !is_segment_name(name) {
                    return Err(format!("`{{{name}}}`: a segment name uses letters, digits and _"));
                }
                if names.contains(&name) {
                    return Err(format!("`{{{name}}}` appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains(['{', '}']) {
                return Err(format!("`{part}`: a placeholder must be a whole segment"));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(Self { segments })
    }

    /// A template of literal segments only.
    pub fn literal(path: &str) -> Self {
        Self { segments: path.trim_start_matches('/').split('/').map(|s| Segment::Literal(s.to_string())).collect() }
    }

    /// The names of the `{name}` segments.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a request path; returns the captured segments.
    pub fn matches(&self, path: &str) -> Option<PathParams> {
        let rest = path.strip_prefix('/')?;
        let mut params = Vec::new();
        let mut parts = rest.split('/');
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_string())),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(params)
    }
}

/// What a placeholder of a topic template names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `{path.NAME}` (or the old `{NAME}`): a segment of the endpoint's path.
    Path(String),
    /// `{header.Name}`: a request header (lowercased).
    Header(String),
}

/// A topic name with `{path.NAME}` and `{header.Name}` placeholders, in the grammar every
/// connector shares ([`danube_connect_core::template`]); a bare `{NAME}` is the old
/// spelling of `{path.NAME}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    template: Template<Source>,
}

/// Why a topic could not be rendered for a request (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A header the topic template needs is absent or not text.
    #[error("header `{0}` is required to choose the topic")]
    MissingHeader(String),
    /// A path segment the template needs was not captured.
    #[error("path segment `{0}` is required to choose the topic")]
    MissingSegment(String),
    /// A placeholder value is empty or longer than allowed.
    #[error("value for `{0}` is empty or longer than 128 characters")]
    BadValue(String),
}

/// Whether `name` can be a path segment's name.
fn is_segment_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TopicTemplate {
    /// Parses a template; the error says what is wrong.
    pub fn parse(template: &str) -> Result<Self, String> {
        let template = Template::parse(template, |placeholder| {
            placeholder.no_modifier()?;
            if let Some(header) = placeholder.dotted("header") {
                if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(format!("`{header}` is not a header name"));
                }
                return Ok(Source::Header(header.to_ascii_lowercase()));
            }
            let segment = placeholder.dotted("path").unwrap_or(&placeholder.name);
            if is_segment_name(segment) {
                Ok(Source::Path(segment.to_string()))
            } else {
                Err("use {path.NAME} (a segment of the endpoint's path) or {header.Name}".into())
            }
        })
        .map_err(|e| e.to_string())?;
        Ok(Self { template })
    }

    /// A template without placeholders.
    pub fn literal(topic: &str) -> Self {
        Self { template: Template::literal(topic) }
    }

    /// Whether the template has no placeholders (every request gets the same topic).
    pub fn is_static(&self) -> bool {
        self.template.is_static()
    }

    /// Names of the path segments the template uses.
    pub fn path_names(&self) -> impl Iterator<Item = &str> {
        self.template.values().filter_map(|p| match p {
            Source::Path(name) => Some(name.as_str()),
            Source::Header(_) => None,
        })
    }

    /// The template with every placeholder replaced by `x` (for validating its form).
    pub fn example(&self) -> String {
        self.template.sample("x")
    }

    /// The topic for one request. Placeholder values keep letters, digits, `-` and `_`;
    /// any other character (`/` and `.` in particular) becomes `_`, so a value can never
    /// leave the configured namespace.
    pub fn render(&self, params: &PathParams, headers: &HeaderMap) -> Result<String, RenderError> {
        self.template.render(|source, topic| {
            let (name, value) = match source {
                Source::Path(name) => {
                    let value = params
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                        .ok_or_else(|| RenderError::MissingSegment(name.clone()))?;
                    (name, value)
                }
                Source::Header(name) => {
                    let value = headers
                        .get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| RenderError::MissingHeader(name.clone()))?;
                    (name, value)
                }
            };
            if value.is_empty() || value.len() > MAX_VALUE_LEN {
                return Err(RenderError::BadValue(name.clone()));
            }
            topic
                .extend(value.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_template_captures_segments() {
        let t = PathTemplate::parse("/hooks/{source}/{id}").expect("parse");
        assert_eq!(
            t.matches("/hooks/github/42"),
            Some(vec![("source".into(), "github".into()), ("id".into(), "42".into())])
        );
        assert_eq!(t.matches("/hooks/github"), None);
        assert_eq!(t.matches("/hooks/github/42/x"), None);
        assert_eq!(t.matches("/other/github/42"), None);
    }

    #[test]
    fn path_template_rejects_bad_forms() {
        assert!(PathTemplate::parse("hooks").is_err());
        assert!(PathTemplate::parse("/a//b").is_err());
        assert!(PathTemplate::parse("/a/x{b}").is_err());
        assert!(PathTemplate::parse("/{a}/{a}").is_err());
    }

    #[test]
    fn topic_template_uses_segments_and_headers_and_sanitizes() {
        let t = TopicTemplate::parse("/default/{source}-{header.X-Event}").expect("parse");
        assert_eq!(t, TopicTemplate::parse("/default/{path.source}-{header.X-Event}").expect("parse"));
        let mut headers = HeaderMap::new();
        headers.insert("x-event", "push/../x".parse().expect("header"));
        let topic = t.render(&vec![("source".into(), "git hub".into())], &headers).expect("render");
        assert_eq!(topic, "/default/git_hub-push____x");
        let missing = t.render(&vec![("source".into(), "a".into())], &HeaderMap::new());
        assert_eq!(missing, Err(RenderError::MissingHeader("x-event".into())));
    }

    #[test]
    fn topic_template_rejects_bad_placeholders() {
        assert!(TopicTemplate::parse("/default/{a b}").is_err());
        assert!(TopicTemplate::parse("/default/{a").is_err());
        assert!(TopicTemplate::parse("/default/a}").is_err());
        assert_eq!(TopicTemplate::parse("/default/{a}").expect("parse").example(), "/default/x");
    }

    #[test]
    fn only_templates_without_placeholders_are_static() {
        assert!(TopicTemplate::parse("/default/a").expect("parse").is_static());
        assert!(!TopicTemplate::parse("/default/{a}").expect("parse").is_static());
        assert!(!TopicTemplate::parse("/default/x-{header.X-Event}").expect("parse").is_static());
    }
}
