//! Test support shared by the waypost crates' metrics tests (not published): a recording
//! `metrics` recorder that can be read without resetting it, and a helper that runs a future
//! with it as the thread's recorder.

/// A recording recorder (on `metrics-util`'s registry and atomic storage) that can be read
/// without resetting it: `metrics_util::debugging::Snapshotter` swaps gauges to zero when it
/// reads them, so a gauge the code left alone would read 0 at the next snapshot, and "set to
/// 0" could not be told from "not set". [`Recording::take`] gives counters and histograms as
/// what happened since the last take, and gauges as their current value.
#[derive(Clone, Default)]
pub struct Recording(std::sync::Arc<RecordingInner>);

struct RecordingInner {
    registry: metrics_util::registry::Registry<metrics::Key, metrics_util::registry::AtomicStorage>,
    described: std::sync::Mutex<std::collections::BTreeMap<String, Option<metrics::Unit>>>,
    counted: std::sync::Mutex<std::collections::HashMap<metrics::Key, u64>>,
}

impl Default for RecordingInner {
    fn default() -> Self {
        RecordingInner {
            registry: metrics_util::registry::Registry::atomic(),
            described: Default::default(),
            counted: Default::default(),
        }
    }
}

impl metrics::Recorder for Recording {
    fn describe_counter(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.describe(&key, unit);
    }
    fn describe_gauge(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.describe(&key, unit);
    }
    fn describe_histogram(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.describe(&key, unit);
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.0
            .registry
            .get_or_create_counter(key, |c| metrics::Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0
            .registry
            .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(g.clone()))
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.0
            .registry
            .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(h.clone()))
    }
}

/// One recorded series.
#[derive(Debug)]
pub enum Value {
    /// A counter's increase since the last take.
    Counter(u64),
    /// A gauge's value.
    Gauge(f64),
    /// A histogram's samples since the last take.
    Histogram(Vec<f64>),
}

/// What a [`Recording`] held at a take, keyed by name and labels (labels in any order).
#[derive(Debug)]
pub struct Recorded(std::collections::HashMap<(String, Vec<(String, String)>), Value>);

fn key_parts(key: &metrics::Key) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

impl Recording {
    fn describe(&self, key: &metrics::KeyName, unit: Option<metrics::Unit>) {
        self.0
            .described
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.as_str().to_owned(), unit);
    }

    /// Counters: their increase since the last take; gauges: their value now; histograms: the
    /// samples recorded since the last take.
    pub fn take(&self) -> Recorded {
        use std::sync::atomic::Ordering;
        let mut all = std::collections::HashMap::new();
        let mut counted = self
            .0
            .counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, c) in self.0.registry.get_counter_handles() {
            let now = c.load(Ordering::SeqCst);
            let before = counted.insert(key.clone(), now).unwrap_or(0);
            all.insert(key_parts(&key), Value::Counter(now - before));
        }
        for (key, g) in self.0.registry.get_gauge_handles() {
            let value = f64::from_bits(g.load(Ordering::SeqCst));
            all.insert(key_parts(&key), Value::Gauge(value));
        }
        for (key, h) in self.0.registry.get_histogram_handles() {
            let mut samples = Vec::new();
            h.clear_with(|xs| samples.extend_from_slice(xs));
            all.insert(key_parts(&key), Value::Histogram(samples));
        }
        Recorded(all)
    }

    /// The metrics described so far, with their units.
    pub fn described(&self) -> std::collections::BTreeMap<String, Option<metrics::Unit>> {
        self.0
            .described
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Recorded {
    /// The series `name` with `labels` (in any order), if it was registered.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.0.get(&(name.to_owned(), labels))
    }

    /// A counter's increase since the last take (0 when it was never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(Value::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    /// A gauge's value, `None` when it was never registered.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.get(name, labels) {
            Some(Value::Gauge(v)) => Some(*v),
            None => None,
            Some(other) => panic!("{name} {labels:?} is not a gauge: {other:?}"),
        }
    }

    /// A histogram's samples since the last take.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(Value::Histogram(v)) => v.clone(),
            None => Vec::new(),
            Some(other) => panic!("{name} {labels:?} is not a histogram: {other:?}"),
        }
    }

    /// The label names every series of metric `name` carries (sorted), one entry per distinct
    /// set: a metric documented with labels `{a,b}` gives exactly `[["a","b"]]`.
    pub fn label_names(&self, name: &str) -> Vec<Vec<String>> {
        let mut sets: Vec<Vec<String>> = self
            .0
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, labels)| labels.iter().map(|(k, _)| k.clone()).collect())
            .collect();
        sets.sort();
        sets.dedup();
        sets
    }
}

/// Runs `f` on a current-thread runtime with `recorder` as this thread's recorder.
///
/// # Panics
/// When the runtime cannot be built.
pub fn recorded<T>(recorder: &Recording, f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    metrics::with_local_recorder(recorder, || rt.block_on(f))
}
