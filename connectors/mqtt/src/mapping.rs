//! MQTT topic filters and the templates that turn topics into Danube topics and back.
//!
//! Matching follows MQTT 3.1.1 section 4.7: `+` matches one level, `#` (last) matches any
//! number of levels including none (`a/#` matches `a`), and topics starting with `$` are
//! not matched by a filter starting with a wildcard.

use danube_connect_core::naming;
use danube_connect_core::template::{self, MissingField, Part, RecordField, Template, TemplateError};
use danube_connect_core::SinkRecord;

use crate::config::{Mapping, Qos};

/// Checks a topic filter; the error says what is wrong.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("must not be empty".into());
    }
    if filter.len() > u16::MAX as usize {
        return Err("must be at most 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err("must not contain NUL".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`{filter}`: `#` must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{filter}`: `+` must be a whole level"));
        }
    }
    Ok(())
}

/// Whether `topic` (a concrete MQTT topic) matches `filter`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let topic_levels: Vec<&str> = topic.split('/').collect();
    for (i, f) in filter.split('/').enumerate() {
        if f == "#" {
            return true;
        }
        let Some(t) = topic_levels.get(i) else {
            return false;
        };
        if f != "+" && f != *t {
            return false;
        }
        if i + 1 == topic_levels.len() {
            // The topic ends here: the filter must end too, or continue with `/#` only.
            let rest: Vec<&str> = filter.split('/').skip(i + 1).collect();
            return rest.is_empty() || rest == ["#"];
        }
    }
    false
}

/// Whether every topic that `narrow` matches is also matched by `wide` (both valid
/// filters). A filter covers itself.
pub fn filter_covers(wide: &str, narrow: &str) -> bool {
    let wide_levels: Vec<&str> = wide.split('/').collect();
    let narrow_levels: Vec<&str> = narrow.split('/').collect();
    // A leading wildcard does not match `$` topics, which a literal `$...` level names.
    let dollar = narrow_levels[0].starts_with('$');
    for (i, w) in wide_levels.iter().enumerate() {
        if i == 0 && dollar && (*w == "+" || *w == "#") {
            return false;
        }
        if *w == "#" {
            // `x/#` matches `x` itself too, so it covers a filter that ends at level i.
            return true;
        }
        let Some(n) = narrow_levels.get(i) else {
            return false;
        };
        match (*w, *n) {
            (_, "#") => return false,
            ("+", _) => {}
            (w, n) if w == n => {}
            _ => return false,
        }
    }
    wide_levels.len() == narrow_levels.len()
}

/// What a placeholder of an inbound template names.
#[derive(Debug, Clone, PartialEq)]
enum Level {
    /// `{N}`: level N of the MQTT topic (0-based).
    Level(usize),
    /// `{topic}`: the whole MQTT topic with `/` as `-`.
    WholeTopic,
}

/// A Danube topic template such as `/iot/factory-{1}-temp`, in the shared grammar
/// ([`danube_connect_core::template`]): `{N}` is level N of the MQTT topic (0-based),
/// `{topic}` the whole MQTT topic with `/` as `-`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicTemplate {
    template: Template<Level>,
}

impl TopicTemplate {
    /// Parses `template` for mapping `filter`; the error says what is wrong.
    pub fn parse(template: &str, filter: &str) -> Result<Self, TemplateError> {
        let filter_levels: Vec<&str> = filter.split('/').collect();
        let open_ended = filter_levels.last() == Some(&"#");
        let template = Template::parse(template, |placeholder| {
            placeholder.no_modifier()?;
            if placeholder.name == "topic" {
                return Ok(Level::WholeTopic);
            }
            let level: usize = placeholder
                .name
                .parse()
                .map_err(|_| "unknown placeholder (use `{N}` for level N, or `{topic}`)".to_string())?;
            if level >= filter_levels.len() && !open_ended {
                return Err(format!("filter `{filter}` has only {} levels", filter_levels.len()));
            }
            Ok(Level::Level(level))
        })?;
        // The literal skeleton must already have the /namespace/topic shape.
        if !is_danube_topic(&template.sample("x")) {
            return Err(TemplateError::Form(format!("`{}` must render to /namespace/topic", template.sample("{}"))));
        }
        Ok(Self { template })
    }

    /// Whether the template has no placeholder (it always renders the same topic).
    pub fn is_static(&self) -> bool {
        self.template.is_static()
    }

    /// The Danube topic for MQTT `topic`, or why there is none.
    pub fn render(&self, topic: &str) -> Result<String, String> {
        let levels: Vec<&str> = topic.split('/').collect();
        let rendered = self
            .template
            .render(|part, out| {
                let value = match part {
                    Level::Level(n) => levels.get(*n).map(|l| sanitize(l)),
                    Level::WholeTopic => Some(sanitize(&topic.replace('/', "-"))),
                };
                match value {
                    Some(value) if !value.is_empty() => {
                        out.push_str(&value);
                        Ok(())
                    }
                    _ => Err(()),
                }
            })
            .map_err(|()| format!("MQTT topic `{topic}` has no level the template needs"))?;
        if is_danube_topic(&rendered) {
            Ok(rendered)
        } else {
            Err(format!("MQTT topic `{topic}` renders to `{rendered}`, not /namespace/topic"))
        }
    }

    /// Whether some MQTT topic could render to `danube_topic` (each placeholder renders
    /// one or more of the characters `sanitize` keeps).
    pub fn can_render(&self, danube_topic: &str) -> bool {
        fn matches(parts: &[Part<Level>], rest: &str) -> bool {
            match parts.split_first() {
                None => rest.is_empty(),
                Some((Part::Literal(text), tail)) => rest.strip_prefix(text.as_str()).is_some_and(|r| matches(tail, r)),
                Some((Part::Value(_), tail)) => {
                    let run =
                        rest.char_indices().find(|(_, c)| !naming::is_topic_char(*c)).map_or(rest.len(), |(i, _)| i);
                    (1..=run).any(|n| matches(tail, &rest[n..]))
                }
            }
        }
        matches(self.template.parts(), danube_topic)
    }
}

/// Keeps what the broker accepts in a topic part (letters, digits, `-`, `_`); anything
/// else, `/` and `.` included, becomes `_`.
fn sanitize(level: &str) -> String {
    naming::sanitize_topic_part(level)
}

fn is_danube_topic(topic: &str) -> bool {
    naming::is_valid_topic(topic)
}

/// The compiled mapping table: first matching filter wins.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

/// One compiled mapping.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its position in the configuration (`connector.mappings[index]`).
    pub index: usize,
    /// The mapping as configured.
    pub mapping: Mapping,
    /// Its compiled Danube topic template.
    pub template: TopicTemplate,
}

impl Router {
    /// Compiles the mappings (validated by the config already).
    pub fn new(mappings: &[Mapping]) -> Result<Self, String> {
        let routes = mappings
            .iter()
            .enumerate()
            .map(|(index, m)| {
                validate_filter(&m.filter)?;
                let template = TopicTemplate::parse(&m.topic, &m.filter).map_err(|e| e.to_string())?;
                Ok(Route { index, mapping: m.clone(), template })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { routes })
    }

    /// The first route whose filter matches `topic`.
    pub fn route(&self, topic: &str) -> Option<&Route> {
        self.routes.iter().find(|r| topic_matches(&r.mapping.filter, topic))
    }

    /// All routes, in configuration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The Danube topics of the mappings without a placeholder, each once: the topics the
    /// runtime creates at start (see `Factory::topics_at_start`).
    pub fn static_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = Vec::new();
        for route in self.routes.iter().filter(|r| r.template.is_static()) {
            if !topics.contains(&route.mapping.topic) {
                topics.push(route.mapping.topic.clone());
            }
        }
        topics
    }

    /// The filters to subscribe to at an MQTT broker, with their QoS: a broker sends one
    /// copy of a message per matching subscription, so a filter covered by another
    /// mapping's filter is left out (of equal filters the first is kept). The covering
    /// filter is subscribed with the highest QoS of the filters it covers, so a QoS 1
    /// mapping keeps at-least-once even under a QoS 0 catch-all. Routing is unchanged:
    /// the first matching mapping still wins.
    pub fn subscriptions(&self) -> Vec<(String, Qos)> {
        let filters: Vec<&Mapping> = self.routes.iter().map(|r| &r.mapping).collect();
        let covered_by_other = |j: usize| {
            filters.iter().enumerate().any(|(i, wide)| {
                i != j
                    && filter_covers(&wide.filter, &filters[j].filter)
                    && (!filter_covers(&filters[j].filter, &wide.filter) || i < j)
            })
        };
        (0..filters.len())
            .filter(|&j| !covered_by_other(j))
            .map(|j| {
                let wide = &filters[j].filter;
                let qos = filters
                    .iter()
                    .filter(|m| filter_covers(wide, &m.filter))
                    .map(|m| m.qos)
                    .max_by_key(|q| u8::from(*q))
                    .unwrap_or(filters[j].qos);
                (wide.clone(), qos)
            })
            .collect()
    }
}

/// A record field in an outbound template; `levels`: its `/` are kept (`:levels`).
#[derive(Debug, Clone, PartialEq)]
struct OutField {
    field: RecordField,
    levels: bool,
}

/// An MQTT topic template for the outbound direction, e.g. `devices/{attr.device}/cmd`, in
/// the shared grammar ([`danube_connect_core::template`]) with the record's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundTemplate {
    template: Template<OutField>,
}

impl OutboundTemplate {
    /// Parses the template; the error says what is wrong.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError::Form("must not be empty".into()));
        }
        let template = Template::parse(template, |placeholder| {
            let field = RecordField::parse(placeholder)
                .ok_or_else(|| format!("unknown placeholder; use {}", template::RECORD_FIELDS))?;
            let levels = match placeholder.modifier.as_deref() {
                None => false,
                Some("levels") if matches!(field, RecordField::Key | RecordField::Attr(_)) => true,
                Some(_) => return Err("the only modifier is `:levels`, of `{key}` and `{attr.NAME}`".into()),
            };
            Ok(OutField { field, levels })
        })?;
        for part in template.parts() {
            if let Part::Literal(text) = part {
                if text.contains('+') || text.contains('#') {
                    return Err(TemplateError::Form("an MQTT topic must not contain `+` or `#`".into()));
                }
            }
        }
        Ok(Self { template })
    }

    /// The placeholder when it is the whole template.
    fn whole(&self) -> Option<&RecordField> {
        match self.template.parts() {
            [Part::Value(OutField { field: field @ (RecordField::Key | RecordField::Attr(_)), .. })] => Some(field),
            _ => None,
        }
    }

    /// Whether every rendering is the inbound MQTT topic of a message this connector took
    /// in: the template is just `{attr.mqtt.topic}` or `{key}` (the inbound routing key).
    pub fn is_inbound_topic(&self) -> bool {
        match self.whole() {
            Some(RecordField::Key) => true,
            Some(RecordField::Attr(attr)) => attr == crate::inbound::ATTR_TOPIC,
            _ => false,
        }
    }

    /// The MQTT topic for a Danube record, or why there is none.
    ///
    /// A value from the record (`{attr.NAME}`, `{key}`) fills one topic level: `/`, `+`,
    /// `#` and NUL in it become `_`, so it cannot add levels or wildcards. It keeps its `/`
    /// (several levels) when asked with `:levels` (`{key:levels}`, `{attr.NAME:levels}`)
    /// or when it is the whole template (the default `{attr.mqtt.topic}` names a whole MQTT
    /// topic); a wildcard or NUL in it is then refused. A topic starting with `$` (reserved
    /// for the broker, e.g. `$SYS`) and one longer than 65535 bytes are refused.
    pub fn render(&self, record: &SinkRecord) -> Result<String, String> {
        let whole_topic = self.whole().is_some();
        let out = self
            .template
            .render(|OutField { field, levels }, out| {
                let value = field.value(record)?;
                if whole_topic || *levels {
                    out.push_str(&value);
                } else {
                    out.extend(value.chars().map(|c| if matches!(c, '/' | '+' | '#' | '\0') { '_' } else { c }));
                }
                Ok::<(), MissingField>(())
            })
            .map_err(|missing| missing.to_string())?;
        let shown: String = out.chars().take(200).collect();
        if out.is_empty() || out.contains('+') || out.contains('#') || out.contains('\0') {
            return Err(format!("`{shown}` is not a valid MQTT topic name"));
        }
        if out.starts_with('$') {
            return Err(format!("`{shown}` starts with `$`, which is reserved for the broker's own topics"));
        }
        if out.len() > u16::MAX as usize {
            return Err(format!("`{shown}...` is longer than 65535 bytes"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A record of `topic` with `key` and `attributes`.
    fn rec(topic: &str, key: Option<&str>, attributes: &HashMap<String, String>) -> SinkRecord {
        let mut record = SinkRecord::new(topic, 0, "x");
        record.routing_key = key.map(str::to_string);
        record.attributes = attributes.clone();
        record
    }

    fn mapping(filter: &str, topic: &str, qos: Qos) -> Mapping {
        Mapping {
            filter: filter.into(),
            topic: topic.into(),
            qos,
            format: crate::config::PayloadFormat::Any,
            max_topics: crate::config::default_max_topics(),
        }
    }

    #[test]
    fn wildcard_matching_table() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/b", true),
            ("factory/+/temp", "factory/line1/temp", true),
            ("factory/+/temp", "factory/line1/humidity", false),
            ("factory/+/temp", "factory/temp", false),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
            ("a/b/c", "a/b", false),
            ("a//b", "a//b", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(topic_matches(filter, topic), expected, "filter {filter} topic {topic}");
        }
    }

    #[test]
    fn filter_validation_table() {
        for ok in ["a", "a/b", "+", "#", "a/+/b", "a/#", "+/+/#", "/a"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a/+b"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn template_uses_topic_levels() {
        let t = TopicTemplate::parse("/iot/factory-{1}-temp", "factory/+/temp").expect("parse");
        assert_eq!(t.render("factory/line1/temp").expect("render"), "/iot/factory-line1-temp");
        let whole = TopicTemplate::parse("/default/{topic}", "sensors/#").expect("parse");
        assert_eq!(whole.render("sensors/a/b").expect("render"), "/default/sensors-a-b");
    }

    #[test]
    fn template_sanitizes_and_rejects_missing_levels() {
        let t = TopicTemplate::parse("/default/dev-{1}", "dev/#").expect("parse");
        assert_eq!(t.render("dev/a b").expect("render"), "/default/dev-a_b");
        assert!(t.render("dev").is_err(), "level 1 is absent");
        assert!(t.render("dev//x").is_err(), "level 1 is empty");
    }

    #[test]
    fn template_shape_is_checked_at_parse() {
        assert!(TopicTemplate::parse("/iot", "a").is_err());
        assert!(TopicTemplate::parse("/iot/{x}", "a").is_err());
        assert!(TopicTemplate::parse("/iot/{3}", "a/+").is_err());
        assert!(TopicTemplate::parse("/iot/{3}", "a/#").is_ok());
        assert!(TopicTemplate::parse("/iot/a{", "a").is_err());
    }

    #[test]
    fn first_matching_mapping_wins() {
        let m = |filter: &str, topic: &str| mapping(filter, topic, Qos::AtLeastOnce);
        let router = Router::new(&[m("a/special", "/default/special"), m("a/#", "/default/all")]).expect("router");
        assert_eq!(router.route("a/special").map(|r| r.mapping.topic.as_str()), Some("/default/special"));
        assert_eq!(router.route("a/other").map(|r| r.mapping.topic.as_str()), Some("/default/all"));
        assert!(router.route("b").is_none());
    }

    #[test]
    fn filter_cover_table() {
        let cases = [
            ("#", "a", true),
            ("#", "a/#", true),
            ("#", "$SYS/x", false),
            ("+/#", "$SYS/#", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/#", "a", true),
            ("a/#", "a/special", true),
            ("a/#", "a/+/b", true),
            ("a/#", "b", false),
            ("a/special", "a/#", false),
            ("+/+", "a/b", true),
            ("+/+", "a/+", true),
            ("+/+", "a/#", false),
            ("+/+", "a", false),
            ("+/+", "a/b/c", false),
            ("a/+", "a/+", true),
            ("a/+", "+/+", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
        ];
        for (wide, narrow, expected) in cases {
            assert_eq!(filter_covers(wide, narrow), expected, "{wide} covers {narrow}");
        }
    }

    #[test]
    fn covered_filters_are_not_subscribed_and_lift_the_qos() {
        let m = |filter: &str, qos: Qos| mapping(filter, "/default/x", qos);
        let router = Router::new(&[
            m("a/special", Qos::AtLeastOnce),
            m("a/#", Qos::AtMostOnce),
            m("b/+", Qos::AtMostOnce),
            m("b/+", Qos::AtLeastOnce),
            m("$SYS/#", Qos::AtMostOnce),
            m("c", Qos::AtMostOnce),
        ])
        .expect("router");
        assert_eq!(
            router.subscriptions(),
            vec![
                ("a/#".to_string(), Qos::AtLeastOnce),
                ("b/+".to_string(), Qos::AtLeastOnce),
                ("$SYS/#".to_string(), Qos::AtMostOnce),
                ("c".to_string(), Qos::AtMostOnce),
            ]
        );
        let catch_all = Router::new(&[m("a/special", Qos::AtMostOnce), m("#", Qos::AtMostOnce)]).expect("router");
        assert_eq!(catch_all.subscriptions(), vec![("#".to_string(), Qos::AtMostOnce)]);
    }

    #[test]
    fn template_can_render_table() {
        let levels = TopicTemplate::parse("/iot/factory-{1}-temp", "factory/+/temp").expect("parse");
        assert!(levels.can_render("/iot/factory-line1-temp"));
        assert!(levels.can_render("/iot/factory-a-b-temp"));
        assert!(!levels.can_render("/iot/factory--temp"), "a level renders at least one character");
        assert!(!levels.can_render("/iot/other"));
        let fixed = TopicTemplate::parse("/default/inbound", "in/#").expect("parse");
        assert!(fixed.can_render("/default/inbound"));
        assert!(!fixed.can_render("/default/inbound2"));
        let whole = TopicTemplate::parse("/default/{topic}", "#").expect("parse");
        assert!(whole.can_render("/default/a-b"));
        assert!(!whole.can_render("/other/a/b"));
    }

    #[test]
    fn outbound_template_back_to_the_inbound_topic_is_recognised() {
        assert!(OutboundTemplate::parse("{attr:mqtt.topic}").expect("parse").is_inbound_topic());
        assert!(OutboundTemplate::parse("{key}").expect("parse").is_inbound_topic());
        assert!(!OutboundTemplate::parse("{attr:device}").expect("parse").is_inbound_topic());
        assert!(!OutboundTemplate::parse("echo/{key}").expect("parse").is_inbound_topic());
    }

    #[test]
    fn outbound_template_renders_attributes_and_names() {
        let t = OutboundTemplate::parse("devices/{attr:device}/{topic}/{key}").expect("parse");
        let attrs = HashMap::from([("device".to_string(), "d7".to_string())]);
        assert_eq!(t.render(&rec("/default/cmd", Some("k"), &attrs)).expect("render"), "devices/d7/cmd/k");
        assert!(t.render(&rec("/default/cmd", None, &attrs)).is_err());
        assert!(t.render(&rec("/default/cmd", Some("k"), &HashMap::new())).is_err());
        assert!(OutboundTemplate::parse("a/#").is_err());
        assert!(OutboundTemplate::parse("a/{nope}").is_err());
        let wildcard = HashMap::from([("device".to_string(), "+".to_string())]);
        assert_eq!(t.render(&rec("/default/cmd", Some("k"), &wildcard)).expect("render"), "devices/_/cmd/k");
    }

    #[test]
    fn outbound_values_from_the_message_fill_one_level() {
        let t = OutboundTemplate::parse("devices/{attr:device}/cmd").expect("parse");
        let render = |device: &str| {
            t.render(&rec("/default/cmd", None, &HashMap::from([("device".to_string(), device.to_string())])))
        };
        assert_eq!(render("x/y").expect("render"), "devices/x_y/cmd", "a `/` cannot add a level");
        assert_eq!(render("../#").expect("render"), "devices/..__/cmd");
        assert_eq!(render("a\0b").expect("render"), "devices/a_b/cmd");
        let leading = OutboundTemplate::parse("{key}/cmd").expect("parse");
        assert!(leading.render(&rec("/default/cmd", Some("$SYS"), &HashMap::new())).is_err(), "broker topics refused");
        // The whole-topic default keeps the levels of the inbound topic, never wildcards.
        let prefixed = OutboundTemplate::parse("echo/{key:levels}/{attr:device:levels}").expect("parse");
        let device = HashMap::from([("device".to_string(), "d/1".to_string())]);
        assert_eq!(prefixed.render(&rec("/default/x", Some("in/a"), &device)).expect("render"), "echo/in/a/d/1");
        assert!(prefixed.render(&rec("/default/x", Some("in/#"), &device)).is_err(), "still no wildcard");
        assert!(OutboundTemplate::parse("a/{attr::levels}").is_err());
        let whole = OutboundTemplate::parse("{attr:mqtt.topic}").expect("parse");
        let attrs = |v: &str| HashMap::from([("mqtt.topic".to_string(), v.to_string())]);
        assert_eq!(whole.render(&rec("/default/x", None, &attrs("a/b/c"))).expect("render"), "a/b/c");
        assert!(whole.render(&rec("/default/x", None, &attrs("a/#"))).is_err());
        assert!(whole.render(&rec("/default/x", None, &attrs("a/+/c"))).is_err());
        assert!(whole.render(&rec("/default/x", None, &attrs(&"x".repeat(70_000)))).is_err());
    }

    #[test]
    fn inbound_levels_are_sanitized_for_the_broker() {
        let t = TopicTemplate::parse("/default/dev-{1}", "dev/+").expect("parse");
        assert_eq!(t.render("dev/a.b").expect("render"), "/default/dev-a_b", "the broker refuses `.`");
        assert!(TopicTemplate::parse("/default/a.b", "dev/+").is_err(), "a literal the broker refuses");
        assert!(!t.can_render("/default/dev-a.b"));
    }

    #[test]
    fn static_topics_are_the_mapped_topics_without_placeholders_each_once() {
        let m = |filter: &str, topic: &str| mapping(filter, topic, Qos::AtLeastOnce);
        let router = Router::new(&[
            m("a/#", "/default/fixed"),
            m("b/+", "/default/b-{1}"),
            m("c/#", "/default/fixed"),
            m("#", "/default/rest"),
        ])
        .expect("router");
        assert_eq!(router.static_topics(), vec!["/default/fixed".to_string(), "/default/rest".to_string()]);
    }
}
