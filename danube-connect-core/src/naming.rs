//! Danube topic names built from outside input (a table name, an MQTT topic level).
//!
//! The real broker accepts a topic `/namespace/topic` only when each of the two parts is
//! made of letters, digits, `_` and `-` (`validate_topic_format` in danube-broker). A name
//! that comes from outside is passed through [`sanitize_topic_part`] before it becomes
//! (part of) a topic, so `x/y` cannot add a level and `a.b` cannot make the broker refuse
//! every publish.

/// Whether `c` may appear in a part of a topic name (ASCII letters, digits, `_`, `-`).
pub fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Whether `part` is a valid, non-empty namespace or topic part.
pub fn is_valid_topic_part(part: &str) -> bool {
    !part.is_empty() && part.chars().all(is_topic_char)
}

/// Whether `topic` is `/namespace/topic` with both parts valid.
pub fn is_valid_topic(topic: &str) -> bool {
    let mut parts = topic.split('/');
    parts.next() == Some("")
        && parts.next().is_some_and(is_valid_topic_part)
        && parts.next().is_some_and(is_valid_topic_part)
        && parts.next().is_none()
}

/// `part` with every character the broker refuses in a topic part (including `/` and
/// `.`) replaced by `_`. An empty input stays empty (callers decide what that means).
pub fn sanitize_topic_part(part: &str) -> String {
    part.chars().map(|c| if is_topic_char(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_names_become_one_valid_part() {
        assert_eq!(sanitize_topic_part("x/y"), "x_y");
        assert_eq!(sanitize_topic_part("a.b c"), "a_b_c");
        assert_eq!(sanitize_topic_part("Orders-2_x"), "Orders-2_x");
        assert_eq!(sanitize_topic_part("é"), "_");
        assert!(is_valid_topic_part(&sanitize_topic_part("../../x")));
    }

    #[test]
    fn topic_shape_table() {
        for ok in ["/default/a", "/ns-1/t_2"] {
            assert!(is_valid_topic(ok), "{ok}");
        }
        for bad in ["default/a", "/default", "/default/a/b", "/default/a.b", "//a", "/default/"] {
            assert!(!is_valid_topic(bad), "{bad}");
        }
    }
}
