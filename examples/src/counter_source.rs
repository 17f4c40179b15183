//! A pull source: numbered records, committed position persisted in a state file.

use std::path::PathBuf;
use std::time::Duration;

use danube_connect_core::config::{validate_topic, ConfigError, Validate};
use danube_connect_core::{
    async_trait, ConnectorError, ConnectorResult, Context, Factory, PullSource, SourceOffset, SourceRecord,
};
use serde::{Deserialize, Serialize};

/// `[connector]` section of the counter source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CounterConfig {
    /// Target topic.
    pub topic: String,
    /// Records per poll.
    pub batch: u64,
    /// Pause between polls, in milliseconds.
    pub interval: u64,
    /// Stop producing after this many records (0 = never).
    pub limit: u64,
    /// Where the committed position is kept (`None`: in memory only).
    pub state_file: Option<PathBuf>,
}

impl Default for CounterConfig {
    fn default() -> Self {
        Self { topic: "/default/counter".into(), batch: 10, interval: 10, limit: 0, state_file: None }
    }
}

impl Validate for CounterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_topic("connector.topic", &self.topic)?;
        if self.batch == 0 {
            return Err(ConfigError::invalid("connector.batch", "must be at least 1"));
        }
        Ok(())
    }
}

#[async_trait]
impl Factory for CounterConfig {
    type Connector = CounterSource;

    fn topics_at_start(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }

    /// Resumes after the committed position in `state_file`, if any.
    async fn start(self, _ctx: Context) -> ConnectorResult<CounterSource> {
        let next = match &self.state_file {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path).map_err(|e| ConnectorError::fatal("read state file", e))?;
                let committed: u64 =
                    text.trim().parse().map_err(|e| ConnectorError::fatal("state file is not a number", e))?;
                committed + 1
            }
            _ => 0,
        };
        Ok(CounterSource { config: self, next })
    }
}

/// Produces `{"n": 0}`, `{"n": 1}`, ... with the number as source offset.
pub struct CounterSource {
    config: CounterConfig,
    next: u64,
}

#[async_trait]
impl PullSource for CounterSource {
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        tokio::time::sleep(Duration::from_millis(self.config.interval)).await;
        let mut records = Vec::new();
        while records.len() < self.config.batch as usize && (self.config.limit == 0 || self.next < self.config.limit) {
            let n = self.next;
            records.push(
                SourceRecord::from_json(&self.config.topic, &serde_json::json!({ "n": n }))?
                    .with_attribute("n", n.to_string())
                    .with_offset(SourceOffset::new("counter", n)),
            );
            self.next += 1;
        }
        Ok(records)
    }

    /// Called in poll order with offsets Danube acked: persist the last one.
    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        let (Some(path), Some(last)) = (&self.config.state_file, offsets.last()) else { return Ok(()) };
        // Write-then-rename: the state file always holds a whole number.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, last.position.to_string()).map_err(|e| ConnectorError::retryable("write state", e))?;
        std::fs::rename(&tmp, path).map_err(|e| ConnectorError::retryable("rename state", e))?;
        Ok(())
    }
}
