//! The metric handles a connector registers through [`ConnectorMetrics`](super::ConnectorMetrics):
//! thin wrappers over the Prometheus client's types, so a connector needs no `prometheus`
//! dependency and core may change its metrics library without breaking connectors. Each is
//! cheap to clone; clones update the same series.

/// A counter (only goes up).
#[derive(Clone, Debug)]
pub struct Counter(pub(super) prometheus::IntCounter);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    #[inline]
    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Counters by label values.
#[derive(Clone, Debug)]
pub struct CounterVec(pub(super) prometheus::IntCounterVec);

impl CounterVec {
    /// The counter of `values` (one per label, in the order the labels were declared),
    /// created at zero on first use. Panics when the number of values differs from the
    /// number of labels (a programming error, as in the Prometheus client).
    #[inline]
    pub fn with_label_values<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> Counter {
        Counter(self.0.with_label_values(values))
    }
}

/// An integer gauge (goes up and down).
#[derive(Clone, Debug)]
pub struct Gauge(pub(super) prometheus::IntGauge);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, value: i64) {
        self.0.set(value);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// Integer gauges by label values.
#[derive(Clone, Debug)]
pub struct GaugeVec(pub(super) prometheus::IntGaugeVec);

impl GaugeVec {
    /// The gauge of `values` (see [`CounterVec::with_label_values`]).
    #[inline]
    pub fn with_label_values<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> Gauge {
        Gauge(self.0.with_label_values(values))
    }

    /// Removes the series of `values` (it is no longer exported); `false` when there was none.
    pub fn remove_label_values<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> bool {
        self.0.remove_label_values(values).is_ok()
    }
}

/// A floating-point gauge (e.g. a timestamp in seconds).
#[derive(Clone, Debug)]
pub struct FloatGauge(pub(super) prometheus::Gauge);

impl FloatGauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, value: f64) {
        self.0.set(value);
    }
}

/// Floating-point gauges by label values.
#[derive(Clone, Debug)]
pub struct FloatGaugeVec(pub(super) prometheus::GaugeVec);

impl FloatGaugeVec {
    /// The gauge of `values` (see [`CounterVec::with_label_values`]).
    #[inline]
    pub fn with_label_values<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> FloatGauge {
        FloatGauge(self.0.with_label_values(values))
    }
}

/// A histogram (e.g. of durations in seconds).
#[derive(Clone, Debug)]
pub struct Histogram(pub(super) prometheus::Histogram);

impl Histogram {
    /// Records one observation.
    #[inline]
    pub fn observe(&self, value: f64) {
        self.0.observe(value);
    }
}

/// Histograms by label values.
#[derive(Clone, Debug)]
pub struct HistogramVec(pub(super) prometheus::HistogramVec);

impl HistogramVec {
    /// The histogram of `values` (see [`CounterVec::with_label_values`]).
    #[inline]
    pub fn with_label_values<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> Histogram {
        Histogram(self.0.with_label_values(values))
    }
}
