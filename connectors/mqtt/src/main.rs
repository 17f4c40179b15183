//! `danube-mqtt`: bridges MQTT and Danube. Configuration: `--config FILE` and/or `MQTT_*`
//! environment variables (see the README).

use std::process::ExitCode;

use danube_connect_core::config::ConfigError;
use danube_connect_core::{cli, RuntimeError, SinkConnector, SourceConnector};
use danube_connector_mqtt::config::{Mode, MqttConfig};
use danube_connector_mqtt::{ClientSource, EmbeddedSource, OutboundSink};

fn main() -> ExitCode {
    cli::run::<MqttConfig, _, _>("danube-mqtt", "MQTT", |config, runtime| async move {
        let dead_letter_topic = config.runtime.dead_letter_topic();
        let connector = config.connector;
        let sink_topics: Vec<String> = config.runtime.sink.topics.iter().map(|t| t.topic.clone()).collect();
        connector.check_both_ways(&sink_topics).map_err(RuntimeError::Config)?;
        let mut sources: Vec<Box<dyn SourceConnector>> = Vec::new();
        match connector.mode {
            Mode::Client => sources.push(Box::new(ClientSource::new(connector.clone(), dead_letter_topic)?)),
            Mode::Embedded => sources.push(Box::new(EmbeddedSource::new(connector.clone(), dead_letter_topic)?)),
            Mode::Off => {}
        }
        let sink: Option<Box<dyn SinkConnector>> = match (&connector.outbound, config.runtime.sink.topics.is_empty()) {
            (Some(outbound), false) => Some(Box::new(OutboundSink::new(connector.broker.clone(), outbound.clone())?)),
            (Some(_), true) => {
                return Err(RuntimeError::Config(ConfigError::invalid(
                    "sink.topics",
                    "`connector.outbound` is set: name the Danube topics to send to MQTT (e.g. [{topic=\"/default/commands\"}])",
                )))
            }
            (None, false) => {
                return Err(RuntimeError::Config(ConfigError::invalid(
                    "connector.outbound",
                    "`sink.topics` is set: configure `connector.outbound` (the MQTT topic template) too",
                )))
            }
            (None, true) => None,
        };
        if sources.is_empty() && sink.is_none() {
            return Err(RuntimeError::Config(ConfigError::invalid(
                "connector.mode",
                "is `off` and no outbound is configured: nothing to do",
            )));
        }
        runtime.run(sources, sink).await
    })
}
