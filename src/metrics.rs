//! Prometheus metrics: what happened to deliveries, per push vendor, and how
//! long they waited and took. Gauges of the queue are read from the database
//! at scrape time, so every instance reports the shared truth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

use crate::webpush::Vendor;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VendorLabel {
    pub vendor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub vendor: String,
    pub outcome: &'static str,
}

fn label(vendor: &str) -> VendorLabel {
    VendorLabel {
        vendor: vendor.to_string(),
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

pub struct Metrics {
    registry: Registry,
    outcomes: Family<OutcomeLabel, Counter>,
    retries: Family<VendorLabel, Counter>,
    queue_wait: Family<VendorLabel, Histogram, fn() -> Histogram>,
    delivery_latency: Family<VendorLabel, Histogram, fn() -> Histogram>,
    pub queued: Gauge,
    pub in_flight: Gauge,
    /// Each known vendor's series, once created. A family lookup builds a
    /// label (a `String`), hashes it and takes the family's lock, and every
    /// delivery makes three: the series themselves are shared handles, so
    /// the senders keep them here instead.
    known: [KnownVendor; Vendor::ALL.len()],
}

/// The outcomes [`Metrics::outcome`] counts.
const OUTCOMES: [&str; 4] = ["delivered", "gone", "failed", "expired"];

#[derive(Default)]
struct KnownVendor {
    queue_wait: OnceLock<Histogram>,
    delivery_latency: OnceLock<Histogram>,
    retries: OnceLock<Counter>,
    outcomes: [OnceLock<Counter>; OUTCOMES.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        let retries = Family::<VendorLabel, Counter>::default();
        let queue_wait = Family::<VendorLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let delivery_latency =
            Family::<VendorLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let queued = Gauge::default();
        let in_flight = Gauge::default();
        registry.register(
            "deliveries",
            "Finished deliveries by outcome (delivered, failed, gone, expired) and push vendor",
            outcomes.clone(),
        );
        registry.register(
            "retries",
            "Delivery attempts that will be retried, by push vendor",
            retries.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from acceptance to each send attempt of a delivery",
            queue_wait.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Duration of one push request",
            delivery_latency.clone(),
        );
        registry.register("queued", "Deliveries waiting (pending)", queued.clone());
        registry.register(
            "in_flight",
            "Deliveries claimed and being sent",
            in_flight.clone(),
        );
        Metrics {
            registry,
            outcomes,
            retries,
            queue_wait,
            delivery_latency,
            queued,
            in_flight,
            known: Default::default(),
        }
    }
}

impl Metrics {
    fn known(&self, vendor: &str) -> Option<&KnownVendor> {
        // A delivery row names its vendor as `Vendor::as_str` wrote it.
        let i = Vendor::ALL.iter().position(|v| v.as_str() == vendor)?;
        Some(&self.known[i])
    }

    /// Applies `f` to a series: the one kept in `slot` (created on first
    /// use), or, for a vendor without a slot, the family's.
    fn series<L, M, C>(
        slot: Option<&OnceLock<M>>,
        family: &Family<L, M, C>,
        label: impl Fn() -> L,
        f: impl FnOnce(&M),
    ) where
        L: Clone + std::hash::Hash + Eq,
        M: Clone,
        C: MetricConstructor<M>,
    {
        match slot {
            Some(slot) => f(slot.get_or_init(|| family.get_or_create(&label()).clone())),
            None => f(&family.get_or_create(&label())),
        }
    }

    /// A delivery finished (`delivered`, `gone`, `failed`, `expired`).
    pub fn outcome(&self, vendor: &str, outcome: &'static str) {
        let slot = self.known(vendor).and_then(|k| {
            let i = OUTCOMES.iter().position(|o| *o == outcome)?;
            Some(&k.outcomes[i])
        });
        let label = || OutcomeLabel {
            vendor: vendor.to_string(),
            outcome,
        };
        Self::series(slot, &self.outcomes, label, |c| {
            c.inc();
        });
    }

    /// A delivery will be retried.
    pub fn retry(&self, vendor: &str) {
        let slot = self.known(vendor).map(|k| &k.retries);
        let inc = |c: &Counter| {
            c.inc();
        };
        Self::series(slot, &self.retries, || label(vendor), inc);
    }

    /// Time from acceptance to a send attempt.
    pub fn observe_queue_wait(&self, vendor: &str, seconds: f64) {
        let slot = self.known(vendor).map(|k| &k.queue_wait);
        let observe = |h: &Histogram| h.observe(seconds);
        Self::series(slot, &self.queue_wait, || label(vendor), observe);
    }

    /// Duration of one push request.
    pub fn observe_delivery_latency(&self, vendor: &str, seconds: f64) {
        let slot = self.known(vendor).map(|k| &k.delivery_latency);
        let observe = |h: &Histogram| h.observe(seconds);
        Self::series(slot, &self.delivery_latency, || label(vendor), observe);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn every_count_reaches_its_series_and_unused_vendors_show_none() {
        let m = Metrics::default();
        m.outcome("fcm", "delivered");
        m.outcome("fcm", "delivered");
        m.outcome("fcm", "gone");
        // A vendor name outside the known ones still gets its own series.
        m.outcome("relay", "failed");
        m.retry("apple");
        m.observe_queue_wait("fcm", 0.5);
        m.observe_queue_wait("fcm", 1.5);
        m.observe_delivery_latency("wns", 0.002);
        let text = m.render();
        for line in [
            "herald_deliveries_total{vendor=\"fcm\",outcome=\"delivered\"} 2",
            "herald_deliveries_total{vendor=\"fcm\",outcome=\"gone\"} 1",
            "herald_deliveries_total{vendor=\"relay\",outcome=\"failed\"} 1",
            "herald_retries_total{vendor=\"apple\"} 1",
            "herald_queue_wait_seconds_count{vendor=\"fcm\"} 2",
            "herald_queue_wait_seconds_sum{vendor=\"fcm\"} 2.0",
            "herald_delivery_latency_seconds_count{vendor=\"wns\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        assert!(!text.contains("vendor=\"mozilla\""), "{text}");
        assert!(!text.contains("outcome=\"expired\""), "{text}");
    }
}
