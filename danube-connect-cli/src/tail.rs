//! `tail`: follows a topic and prints its records as they arrive.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use danube_client::{ConsumerOptions, SubType};
use danube_connect_core::config::validate_topic;
use danube_connect_core::error::error_chain;
use serde_json::Value;
use tracing::warn;

use crate::decode::{self, Decoder};
use crate::{CliError, Context};

/// The subscription `tail` reads through unless `--subscription` names another.
pub const TAIL_SUBSCRIPTION: &str = "danube-connect-tail";

/// `tail` arguments.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic to follow (`/namespace/topic`; a partitioned topic's partitions are all read).
    pub topic: String,
    /// Print one JSON object per record (`topic`, `offset`, `id`, `publish_time`, `producer`,
    /// `key`, `attributes`, `payload`, `payload_encoding`, ...) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The subscription (Exclusive) to read through. Danube keeps it, and the next tail with
    /// the same name starts where this one stopped; the first one starts at the end of the topic.
    #[arg(long, default_value = TAIL_SUBSCRIPTION)]
    pub subscription: String,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop when no record came for this long (default: follow until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle: Option<Duration>,
}

/// Follows `args.topic`, printing each record; every record is acked once printed.
pub async fn tail(context: &Context, args: &TailArgs) -> Result<(), CliError> {
    validate_topic("TOPIC", &args.topic)
        .map_err(|e| CliError::Argument { argument: "TOPIC", message: e.to_string() })?;
    let subscribe_error =
        |source| CliError::Subscribe { topic: args.topic.clone(), subscription: args.subscription.clone(), source };
    let mut consumer = context
        .connection
        .client()
        .new_consumer()
        .with_topic(args.topic.clone())
        .with_consumer_name(format!("danube-connect-tail-{}", std::process::id()))
        .with_subscription(args.subscription.clone())
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::new(3, 100, 1000))
        .build()
        .map_err(subscribe_error)?;
    consumer.subscribe().await.map_err(subscribe_error)?;
    let mut messages = consumer.receive().await.map_err(subscribe_error)?;
    eprintln!("following {} (subscription {}); new records only", args.topic, args.subscription);

    let decoder = Decoder::new(context.connection.schema_registry(), &context.config.schemas);
    let mut printed = 0usize;
    let outcome = loop {
        if args.count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        let next = async {
            match args.idle {
                Some(idle) => tokio::time::timeout(idle, messages.recv()).await.ok().flatten(),
                None => messages.recv().await,
            }
        };
        let message = tokio::select! {
            message = next => message,
            _ = context.cancel.cancelled() => None,
        };
        let Some(message) = message else { break Ok(()) };
        let record = decoder.message_json(&message, Some(args.topic.as_str())).await;
        let written = {
            let mut out = std::io::stdout().lock();
            let line = if args.json { writeln!(out, "{record}") } else { write_text(&mut out, &record) };
            line.and_then(|()| out.flush())
        };
        if let Err(error) = written {
            // Not acked: the next tail on this subscription prints it.
            break Err(CliError::Output(error));
        }
        printed += 1;
        if let Err(error) = consumer.ack(&message).await {
            warn!(error = %error_chain(&error), "ack failed; the record may be printed again");
        }
    };
    consumer.close().await;
    outcome
}

fn write_text(out: &mut impl Write, record: &Value) -> std::io::Result<()> {
    let payload = decode::Decoded::from_record(record);
    write!(out, "{} ", record["id"].as_str().unwrap_or("-"))?;
    if let Some(key) = record["key"].as_str() {
        write!(out, "key={key} ")?;
    }
    if let Some(attributes) = record["attributes"].as_object() {
        for (name, value) in attributes {
            write!(out, "{name}={} ", value.as_str().unwrap_or_default())?;
        }
    }
    writeln!(out, "| {}", decode::short(&payload, 500))
}
