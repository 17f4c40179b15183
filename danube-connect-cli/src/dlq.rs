//! `dlq inspect` and `dlq replay`: reading a dead-letter topic through the durable subscription
//! the runtime creates at connector start, and sending dead letters back.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use danube_client::{Consumer, ConsumerOptions};
use danube_connect_core::config::{validate_topic, SourceConfig};
use danube_connect_core::dead_letter::{attributes, DEAD_LETTER_SUBSCRIPTION, DEAD_LETTER_SUBSCRIPTION_TYPE};
use danube_connect_core::error::error_chain;
use danube_connect_core::schema::TopicSchemas;
use danube_connect_core::MESSAGE_ID_ATTRIBUTE;
use danube_connect_core::{Publisher, SourceRecord};
use danube_core::message::StreamMessage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decode::{self, Decoder};
use crate::{CliError, Context, DlqTopic};

/// The attributes counted by `dlq inspect`.
pub const COUNTED: [&str; 3] = [attributes::ERROR_KIND, attributes::CONNECTOR, attributes::SOURCE_TOPIC];

/// `dlq inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The dead-letter topic and how long to wait for more.
    #[command(flatten)]
    pub dlq: DlqTopic,
    /// How many of the last dead letters to show with their error and payload.
    #[arg(long, default_value_t = 10)]
    pub last: usize,
    /// Print one JSON object (counts and records) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `dlq replay` arguments.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The dead-letter topic and how long to wait for more.
    #[command(flatten)]
    pub dlq: DlqTopic,
    /// Re-publish to this topic instead of each dead letter's `dlq.source_topic`.
    #[arg(long)]
    pub to: Option<String>,
    /// Replay only dead letters of this `dlq.error_kind` (repeatable).
    #[arg(long = "error-kind")]
    pub error_kind: Vec<String>,
    /// Replay only dead letters that failed at or after this time: a duration ago (`2h`,
    /// `30m`), an RFC 3339 time (`2026-12-06T05:00:00Z`) or milliseconds since the Unix epoch.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<u64>,
    /// Replay at most this many dead letters.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Show what would be replayed; publish and ack nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Re-publish at most this many records per second (spare a target that just recovered).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long one re-publish may wait for Danube's ack.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,
    /// Print JSON (one object per dry-run or failed record, then a summary object) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--since`: a duration ago, an RFC 3339 time, or milliseconds since the Unix epoch.
pub fn parse_since(value: &str) -> Result<u64, String> {
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ago) = humantime::parse_duration(value) {
        let now = SystemTime::now();
        let at = now.checked_sub(ago).unwrap_or(UNIX_EPOCH);
        return Ok(millis(at));
    }
    humantime::parse_rfc3339_weak(value).map(millis).map_err(|_| {
        format!("`{value}` is neither a duration (2h), an RFC 3339 time (2026-12-06T05:00:00Z) nor epoch milliseconds")
    })
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A reader of the dead-letter subscription; acks only what it is told to.
struct DlqReader {
    consumer: Consumer,
    messages: mpsc::Receiver<StreamMessage>,
    wait: Duration,
    cancel: CancellationToken,
}

impl DlqReader {
    async fn open(context: &Context, topic: &str, wait: Duration) -> Result<Self, CliError> {
        let subscribe_error = |source| CliError::Subscribe {
            topic: topic.to_string(),
            subscription: DEAD_LETTER_SUBSCRIPTION.to_string(),
            source,
        };
        let mut consumer = context
            .connection
            .client()
            .new_consumer()
            .with_topic(topic.to_string())
            .with_consumer_name(format!("danube-connect-cli-{}", std::process::id()))
            .with_subscription(DEAD_LETTER_SUBSCRIPTION.to_string())
            .with_subscription_type(DEAD_LETTER_SUBSCRIPTION_TYPE)
            .with_options(ConsumerOptions::new(3, 100, 1000))
            .build()
            .map_err(subscribe_error)?;
        consumer.subscribe().await.map_err(subscribe_error)?;
        let messages = consumer.receive().await.map_err(subscribe_error)?;
        Ok(Self { consumer, messages, wait, cancel: context.cancel.clone() })
    }

    /// The next dead letter, or `None` once none came for `wait` (or on a signal).
    async fn next(&mut self) -> Option<StreamMessage> {
        tokio::select! {
            message = tokio::time::timeout(self.wait, self.messages.recv()) => message.ok().flatten(),
            _ = self.cancel.cancelled() => None,
        }
    }

    async fn ack(&mut self, message: &StreamMessage) -> Result<(), String> {
        self.consumer.ack(message).await.map_err(|e| error_chain(&e))
    }

    /// Closes the consumer: what it did not ack goes back to the subscription.
    async fn close(mut self) {
        self.consumer.close().await;
    }
}

fn dlq_topic(context: &Context, args: &DlqTopic) -> Result<String, CliError> {
    let topic = args.topic.clone().unwrap_or_else(|| context.config.dead_letter_topic());
    validate_topic("TOPIC", &topic).map_err(|e| CliError::Argument { argument: "TOPIC", message: e.to_string() })?;
    Ok(topic)
}

fn attribute<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.attributes.get(name).map(String::as_str)
}

/// The id a replayed record carries in [`MESSAGE_ID_ATTRIBUTE`]: the one it already carries
/// (it was replayed before and failed again), else the dead letter's own message id
/// (`{dead-letter topic}:{offset}`), which is the same in every replay run.
pub fn replay_id(message: &StreamMessage) -> String {
    match attribute(message, MESSAGE_ID_ATTRIBUTE) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => decode::message_id(message),
    }
}

/// The record a dead letter is replayed as: its payload, key and attributes less the `dlq.*`
/// ones, plus [`MESSAGE_ID_ATTRIBUTE`] (see [`replay_id`]), for `target`.
pub fn replay_record(message: &StreamMessage, target: &str) -> SourceRecord {
    let kept = message.attributes.iter().filter(|(name, _)| !name.starts_with("dlq."));
    let mut record = SourceRecord::new(target, message.payload.clone())
        .with_attributes(kept.map(|(k, v)| (k.clone(), v.clone())))
        .with_attribute(MESSAGE_ID_ATTRIBUTE, replay_id(message));
    record.routing_key = message.routing_key.clone();
    record
}

/// Reads the dead-letter topic without acking anything, counts and shows.
pub async fn inspect(context: &Context, args: &InspectArgs) -> Result<(), CliError> {
    let topic = dlq_topic(context, &args.dlq)?;
    let mut reader = DlqReader::open(context, &topic, args.dlq.wait).await?;
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    while let Some(message) = reader.next().await {
        if seen.insert(decode::message_id(&message)) {
            records.push(message);
        }
    }
    reader.close().await;
    records.sort_by_key(|m| (m.publish_time, m.msg_id.topic_offset));

    let mut counts: BTreeMap<&str, BTreeMap<String, usize>> = COUNTED.iter().map(|a| (*a, BTreeMap::new())).collect();
    for message in &records {
        for name in COUNTED {
            let value = attribute(message, name).unwrap_or("(none)").to_string();
            *counts.entry(name).or_default().entry(value).or_default() += 1;
        }
    }
    let decoder = Decoder::new(context.connection.schema_registry(), &context.config.schemas);
    let last = &records[records.len().saturating_sub(args.last)..];
    let mut shown = Vec::with_capacity(last.len());
    for message in last {
        let source = attribute(message, attributes::SOURCE_TOPIC);
        shown.push(decoder.message_json(message, source).await);
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        let object = json!({
            "topic": topic,
            "subscription": DEAD_LETTER_SUBSCRIPTION,
            "read": records.len(),
            "counts": counts,
            "last": shown,
        });
        writeln!(out, "{object}")?;
    } else {
        writeln!(
            out,
            "{topic} (subscription {DEAD_LETTER_SUBSCRIPTION}): {} dead letters read, none acked",
            records.len()
        )?;
        for (name, values) in &counts {
            writeln!(out, "by {name}:")?;
            for (value, count) in values {
                writeln!(out, "  {count:>7}  {value}")?;
            }
        }
        if !shown.is_empty() {
            writeln!(out, "last {}:", shown.len())?;
        }
        for record in &shown {
            write_record_text(&mut out, record)?;
        }
    }
    out.flush()?;
    eprintln!(
        "note: a reader gets at most the subscription's dispatch window of unacked dead letters at once \
         (broker default 10); to count more, raise the window of subscription {DEAD_LETTER_SUBSCRIPTION} \
         (docs/operations.md)"
    );
    Ok(())
}

fn write_record_text(out: &mut impl Write, record: &Value) -> std::io::Result<()> {
    let attr = |name: &str| record["attributes"][name].as_str().unwrap_or("-").to_string();
    let failed_at = record["attributes"][attributes::FAILED_AT]
        .as_str()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
        .unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "- {}  failed {}  kind {}  from {}  connector {}  attempts {}",
        record["id"].as_str().unwrap_or("-"),
        failed_at,
        attr(attributes::ERROR_KIND),
        attr(attributes::SOURCE_TOPIC),
        attr(attributes::CONNECTOR),
        attr(attributes::ATTEMPTS),
    )?;
    writeln!(out, "    error: {}", attr(attributes::ERROR))?;
    if let Some(key) = record["key"].as_str() {
        writeln!(out, "    key: {key}")?;
    }
    let payload = decode::Decoded::from_record(record);
    writeln!(out, "    payload ({}): {}", payload.encoding, decode::short(&payload, 200))?;
    if let Some(error) = record["decode_error"].as_str() {
        writeln!(out, "    decode error: {error}")?;
    }
    Ok(())
}

/// What a replay did.
#[derive(Debug, Default)]
struct Tally {
    read: usize,
    replayed: usize,
    skipped: usize,
    failed: usize,
}

/// Why a dead letter is not replayed by this run.
enum Verdict {
    /// Re-publish it to this topic.
    Replay(String),
    /// Filtered out: left in the dead-letter topic.
    Skip,
    /// Cannot be replayed: left in the dead-letter topic, reported.
    Fail(String),
}

fn verdict(message: &StreamMessage, args: &ReplayArgs) -> Verdict {
    if !args.error_kind.is_empty() {
        let kind = attribute(message, attributes::ERROR_KIND).unwrap_or_default();
        if !args.error_kind.iter().any(|wanted| wanted == kind) {
            return Verdict::Skip;
        }
    }
    if let Some(since) = args.since {
        let failed_at = attribute(message, attributes::FAILED_AT).and_then(|ms| ms.parse::<u64>().ok());
        if failed_at.is_none_or(|at| at < since) {
            return Verdict::Skip;
        }
    }
    if let Some(size) = attribute(message, attributes::PAYLOAD_OMITTED_BYTES) {
        return Verdict::Fail(format!("its payload ({size} bytes) was too large to keep in the dead letter"));
    }
    match args.to.as_deref().or_else(|| attribute(message, attributes::SOURCE_TOPIC)) {
        Some(target) if !target.is_empty() => Verdict::Replay(target.to_string()),
        _ => Verdict::Fail(format!("no `{}` attribute: give --to TOPIC", attributes::SOURCE_TOPIC)),
    }
}

fn progress_bar(limit: Option<usize>) -> ProgressBar {
    let bar = match limit {
        Some(limit) => ProgressBar::new(limit as u64),
        None => ProgressBar::new_spinner(),
    };
    let template = match limit {
        Some(_) => "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        None => "{spinner} [{elapsed_precise}] {pos} replayed {msg}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    // Only on a terminal: scripts and logs get the summary line alone.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(200));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Re-publishes dead letters; each is acked only after Danube acked its re-publish.
pub async fn replay(context: &Context, args: &ReplayArgs) -> Result<(), CliError> {
    let topic = dlq_topic(context, &args.dlq)?;
    if let Some(to) = &args.to {
        validate_topic("--to", to).map_err(|e| CliError::Argument { argument: "--to", message: e.to_string() })?;
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(CliError::Argument { argument: "--rate", message: "must be a positive number".into() });
        }
    }
    let publisher = if args.dry_run {
        None
    } else {
        let schemas =
            TopicSchemas::resolve(&context.connection, &context.config.schemas).await.map_err(CliError::Schemas)?;
        let config = SourceConfig {
            producers_per_topic: 1,
            publish_timeout: args.publish_timeout,
            ..context.config.source.clone()
        };
        let name = "danube-connect-replay";
        Some(Publisher::detached(&context.connection, config, name, schemas))
    };
    let mut reader = DlqReader::open(context, &topic, args.dlq.wait).await?;
    let bar = progress_bar(args.limit);
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    let pace = args.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut next_slot = Instant::now();
    // Dead letters already handled in this run (a redelivery of one not acked comes back).
    let mut handled = HashSet::new();
    while args.limit.is_none_or(|limit| tally.replayed < limit) {
        let Some(message) = reader.next().await else { break };
        let id = decode::message_id(&message);
        if !handled.insert(id.clone()) {
            continue;
        }
        tally.read += 1;
        let target = match verdict(&message, args) {
            Verdict::Replay(target) => target,
            Verdict::Skip => {
                tally.skipped += 1;
                continue;
            }
            Verdict::Fail(reason) => {
                tally.failed += 1;
                report(&mut out, &bar, args.json, &id, None, "not replayable", &reason)?;
                continue;
            }
        };
        let record = replay_record(&message, &target);
        let Some(publisher) = &publisher else {
            tally.replayed += 1;
            let kind = attribute(&message, attributes::ERROR_KIND).unwrap_or("-");
            if args.json {
                let line = json!({"id": id, "replay_id": replay_id(&message), "to": target, "error_kind": kind, "dry_run": true});
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "would replay {id} -> {target} (kind {kind}, id {})", replay_id(&message))?;
            }
            continue;
        };
        if let Some(pace) = pace {
            let now = Instant::now();
            if next_slot > now {
                tokio::time::sleep(next_slot - now).await;
            }
            next_slot = next_slot.max(now) + pace;
        }
        match publisher.publish(record).await {
            Ok(()) => match reader.ack(&message).await {
                Ok(()) => {
                    tally.replayed += 1;
                    bar.inc(1);
                }
                Err(error) => {
                    // Re-published but still in the dead-letter topic: a later run sends it
                    // again with the same id, which receivers drop.
                    tally.replayed += 1;
                    bar.inc(1);
                    report(&mut out, &bar, args.json, &id, Some(&target), "replayed, ack failed", &error)?;
                }
            },
            Err(error) => {
                tally.failed += 1;
                report(&mut out, &bar, args.json, &id, Some(&target), "publish failed", &error_chain(&error))?;
            }
        }
        bar.set_message(format!("skipped {}, failed {}", tally.skipped, tally.failed));
    }
    bar.finish_and_clear();
    reader.close().await;
    if let Some(publisher) = publisher {
        publisher.close().await;
    }
    let verb = if args.dry_run { "would replay" } else { "replayed" };
    if args.json {
        let summary = json!({
            "topic": topic,
            "dry_run": args.dry_run,
            "read": tally.read,
            "replayed": tally.replayed,
            "skipped": tally.skipped,
            "failed": tally.failed,
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "{verb} {} of {} dead letters read from {topic} ({} left by the filters, {} failed)",
            tally.replayed, tally.read, tally.skipped, tally.failed
        )?;
    }
    out.flush()?;
    if tally.failed > 0 {
        return Err(CliError::ReplayIncomplete { failed: tally.failed });
    }
    Ok(())
}

fn report(
    out: &mut impl Write,
    bar: &ProgressBar,
    json: bool,
    id: &str,
    target: Option<&str>,
    what: &str,
    reason: &str,
) -> std::io::Result<()> {
    bar.suspend(|| {
        if json {
            writeln!(out, "{}", json!({"id": id, "to": target, "outcome": what, "error": reason}))
        } else {
            writeln!(out, "{id}: {what}: {reason}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use danube_core::message::MessageID;

    fn dead_letter(offset: u64, attrs: &[(&str, &str)]) -> StreamMessage {
        StreamMessage {
            request_id: 0,
            msg_id: MessageID {
                producer_id: 1,
                topic_name: "/default/dlq-x".into(),
                broker_addr: String::new(),
                topic_offset: offset,
            },
            payload: b"{\"id\":1}".to_vec().into(),
            publish_time: 0,
            producer_name: "p".into(),
            subscription_name: None,
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            schema_id: None,
            schema_version: None,
            routing_key: Some("k1".into()),
        }
    }

    #[test]
    fn a_replayed_record_drops_dlq_attributes_and_carries_a_stable_id() {
        let message = dead_letter(
            7,
            &[(attributes::ERROR, "boom"), (attributes::SOURCE_TOPIC, "/default/orders"), ("tenant", "a")],
        );
        let record = replay_record(&message, "/default/orders");
        assert_eq!(record.topic, "/default/orders");
        assert_eq!(record.routing_key.as_deref(), Some("k1"));
        assert_eq!(&record.payload[..], b"{\"id\":1}");
        assert_eq!(record.attributes.get("tenant").map(String::as_str), Some("a"));
        assert!(record.attributes.keys().all(|k| !k.starts_with("dlq.")), "{:?}", record.attributes);
        assert_eq!(record.attributes[MESSAGE_ID_ATTRIBUTE], "/default/dlq-x:7");
        // Replayed, failed again, dead-lettered again: the first id is kept.
        let again = dead_letter(12, &[(MESSAGE_ID_ATTRIBUTE, "/default/dlq-x:7")]);
        assert_eq!(replay_record(&again, "/default/orders").attributes[MESSAGE_ID_ATTRIBUTE], "/default/dlq-x:7");
    }

    #[test]
    fn since_takes_durations_times_and_epoch_millis() {
        assert_eq!(parse_since("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_since("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        let hour_ago = parse_since("1h").expect("duration");
        let expected = millis(SystemTime::now()) - 3_600_000;
        assert!(hour_ago.abs_diff(expected) < 5_000, "{hour_ago} vs {expected}");
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn filters_leave_dead_letters_that_do_not_match() {
        let args = |kinds: &[&str], since: Option<u64>| ReplayArgs {
            dlq: DlqTopic { topic: None, wait: Duration::from_secs(1) },
            to: None,
            error_kind: kinds.iter().map(|k| k.to_string()).collect(),
            since,
            limit: None,
            dry_run: false,
            rate: None,
            publish_timeout: Duration::from_secs(1),
            json: false,
        };
        let message = dead_letter(
            1,
            &[
                (attributes::ERROR_KIND, "retryable"),
                (attributes::FAILED_AT, "1000"),
                (attributes::SOURCE_TOPIC, "/default/o"),
            ],
        );
        assert!(matches!(verdict(&message, &args(&[], None)), Verdict::Replay(t) if t == "/default/o"));
        assert!(matches!(verdict(&message, &args(&["invalid"], None)), Verdict::Skip));
        assert!(matches!(verdict(&message, &args(&["invalid", "retryable"], Some(1000))), Verdict::Replay(_)));
        assert!(matches!(verdict(&message, &args(&[], Some(1001))), Verdict::Skip));
        let orphan = dead_letter(2, &[]);
        assert!(matches!(verdict(&orphan, &args(&[], None)), Verdict::Fail(_)));
        let omitted =
            dead_letter(3, &[(attributes::PAYLOAD_OMITTED_BYTES, "5000000"), (attributes::SOURCE_TOPIC, "/default/o")]);
        assert!(matches!(verdict(&omitted, &args(&[], None)), Verdict::Fail(_)));
    }
}
