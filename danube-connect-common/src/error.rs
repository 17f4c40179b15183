//! Error formatting shared by the SDK, the connectors and the development broker.

/// Formats an error and its sources as `outer: inner: innermost`, skipping a source whose
/// text the outer message already contains (many errors repeat their source's message).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("read failed: disk gone")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn sources_are_joined_and_repeated_text_is_skipped() {
        let inner = || std::io::Error::other("disk gone");
        assert_eq!(error_chain(&Outer(inner())), "outer: disk gone");
        assert_eq!(error_chain(&Repeating(inner())), "read failed: disk gone");
    }
}
