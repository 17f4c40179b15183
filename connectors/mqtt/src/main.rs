//! `danube-mqtt`: bridges MQTT and Danube. Configuration: `--config FILE` and/or `MQTT_*`
//! environment variables (see the README).

use std::process::ExitCode;

use danube_connect_core::{cli, SinkConnector, SourceConnector};
use danube_connector_mqtt::config::{Mode, MqttConfig};
use danube_connector_mqtt::{ClientSource, EmbeddedSource, OutboundSink};

fn main() -> ExitCode {
    cli::run::<MqttConfig, _, _>("danube-mqtt", "MQTT", |config, runtime| async move {
        let connector = config.connector;
        // Every cross-section check ran at load (`MqttConfig::validate_with_runtime`), so
        // `--check` refuses the same configurations.
        let mut sources: Vec<Box<dyn SourceConnector>> = Vec::new();
        match connector.mode {
            Mode::Client => sources.push(Box::new(ClientSource::new(connector.clone())?)),
            Mode::Embedded => sources.push(Box::new(EmbeddedSource::new(connector.clone())?)),
            Mode::Off => {}
        }
        let sink: Option<Box<dyn SinkConnector>> = match &connector.outbound {
            Some(outbound) => Some(Box::new(OutboundSink::new(connector.broker.clone(), outbound.clone())?)),
            None => None,
        };
        runtime.run(sources, sink).await
    })
}
