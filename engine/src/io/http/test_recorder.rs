//! A `metrics` recorder for tests: every counter increment and histogram value, with its key.

use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// What was recorded: `(key, value)` in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Log(Arc<Mutex<Vec<(Key, f64)>>>);

struct Series(Key, Log);

impl CounterFn for Series {
    fn increment(&self, v: u64) {
        self.1.0.lock().unwrap().push((self.0.clone(), v as f64));
    }
    fn absolute(&self, v: u64) {
        self.increment(v);
    }
}

impl HistogramFn for Series {
    fn record(&self, v: f64) {
        self.1.0.lock().unwrap().push((self.0.clone(), v));
    }
}

impl Recorder for Log {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Series(key.clone(), self.clone())))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Series(key.clone(), self.clone())))
    }
}

impl Log {
    /// The values recorded for `name` with all of `labels`.
    pub(crate) fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let log = self.0.lock().unwrap();
        log.iter()
            .filter(|(k, _)| {
                k.name() == name
                    && labels
                        .iter()
                        .all(|(l, v)| k.labels().any(|x| x.key() == *l && x.value() == *v))
            })
            .map(|(_, v)| *v)
            .collect()
    }

    /// The sum of [`Log::values`] (a counter's increments).
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.values(name, labels).iter().sum()
    }
}

/// Runs `f` on a current-thread runtime with a fresh [`Log`] as the thread's recorder;
/// everything `f` spawns runs on this thread, so it records there too.
pub(crate) fn with_log<F: std::future::Future>(f: impl FnOnce() -> F) -> (F::Output, Log) {
    let log = Log::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = metrics::with_local_recorder(&log, || rt.block_on(f()));
    (out, log)
}
