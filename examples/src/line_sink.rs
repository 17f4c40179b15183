//! A sink: one line per record appended to a file, fsynced before `Ok`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use danube_connect_core::config::{ConfigError, Validate};
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, Sink, SinkRecord};
use serde::{Deserialize, Serialize};

/// `[connector]` section of the line sink.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineSinkConfig {
    /// Output file (`None`: standard output).
    pub path: Option<PathBuf>,
}

impl Validate for LineSinkConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(parent) = self.path.as_ref().and_then(|p| p.parent()) {
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                return Err(ConfigError::invalid(
                    "connector.path",
                    format!("directory {} does not exist", parent.display()),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Factory for LineSinkConfig {
    type Connector = LineSink;

    /// Opens (appends to) the configured file.
    async fn start(self, _ctx: Context) -> ConnectorResult<LineSink> {
        let file = match &self.path {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| ConnectorError::fatal("open output file", e))?,
            )),
            None => None,
        };
        Ok(LineSink { file })
    }
}

/// Appends `{topic}\t{offset}\t{payload}` lines.
#[derive(Debug)]
pub struct LineSink {
    file: Option<Mutex<std::fs::File>>,
}

#[async_trait]
impl Sink for LineSink {
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        self.process_batch(std::slice::from_ref(record)).await
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let mut text = String::new();
        for record in records {
            let payload = String::from_utf8_lossy(&record.payload);
            text.push_str(&format!("{}\t{}\t{}\n", record.topic, record.offset, payload));
        }
        match &self.file {
            Some(file) => {
                let mut file = file.lock().map_err(|_| ConnectorError::fatal_msg("output file lock poisoned"))?;
                file.write_all(text.as_bytes()).map_err(|e| ConnectorError::retryable("write output", e))?;
                file.sync_data().map_err(|e| ConnectorError::retryable("fsync output", e))?;
            }
            None => print!("{text}"),
        }
        Ok(())
    }
}
