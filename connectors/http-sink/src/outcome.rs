//! What a response means: success, retryable or permanent, and the `Retry-After` hint.

use std::time::{Duration, SystemTime};

use crate::config::OutcomesConfig;

/// One entry of an outcome list: an exact status (`503`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    /// Exactly this status.
    Exact(u16),
    /// Every status of this hundred (`5` for `5xx`).
    Class(u16),
}

impl StatusPattern {
    /// Parses `"503"` or `"5xx"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        if let Some(class) = text.strip_suffix("xx") {
            return match class.parse::<u16>() {
                Ok(c) if (1..=5).contains(&c) => Ok(Self::Class(c)),
                _ => Err(format!("`{text}` is not a status class; use 1xx to 5xx")),
            };
        }
        match text.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Ok(Self::Exact(code)),
            _ => Err(format!("`{text}` is not a status (100-599) or a class (\"5xx\")")),
        }
    }

    fn matches(self, status: u16) -> bool {
        match self {
            Self::Exact(code) => code == status,
            Self::Class(class) => status / 100 == class,
        }
    }
}

/// What a status means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Delivered: ack it.
    Success,
    /// Worth another attempt.
    Retryable,
    /// The receiver refuses it for good: failure policy at once.
    Permanent,
}

/// The outcome lists, parsed.
#[derive(Debug, Clone)]
pub struct Outcomes {
    success: Vec<StatusPattern>,
    retryable: Vec<StatusPattern>,
}

impl Outcomes {
    /// Parses the configured lists (already validated; bad entries are skipped).
    pub fn new(config: &OutcomesConfig) -> Self {
        let parse = |list: &[String]| list.iter().filter_map(|p| StatusPattern::parse(p).ok()).collect();
        Self { success: parse(&config.success), retryable: parse(&config.retryable) }
    }

    /// The class of `status`: success first, then retryable, else permanent.
    pub fn classify(&self, status: u16) -> Class {
        if self.success.iter().any(|p| p.matches(status)) {
            Class::Success
        } else if self.retryable.iter().any(|p| p.matches(status)) {
            Class::Retryable
        } else {
            Class::Permanent
        }
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (relative to `now`).
/// Returns `None` for a value that is neither; a date in the past is a zero delay.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lists_classify_like_a_webhook_platform() {
        let o = Outcomes::new(&OutcomesConfig::default());
        assert_eq!(o.classify(200), Class::Success);
        assert_eq!(o.classify(204), Class::Success);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(o.classify(s), Class::Retryable, "{s}");
        }
        for s in [301, 400, 401, 403, 404, 410, 422] {
            assert_eq!(o.classify(s), Class::Permanent, "{s}");
        }
    }

    #[test]
    fn lists_are_configurable() {
        let o = Outcomes::new(&OutcomesConfig { success: vec!["200".into()], retryable: vec!["409".into()] });
        assert_eq!(o.classify(202), Class::Permanent);
        assert_eq!(o.classify(409), Class::Retryable);
        assert_eq!(o.classify(503), Class::Permanent);
    }

    #[test]
    fn retry_after_in_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(StatusPattern::parse("9xx").is_err());
        assert!(StatusPattern::parse("42").is_err());
        assert_eq!(StatusPattern::parse("5XX"), Ok(StatusPattern::Class(5)));
    }
}
