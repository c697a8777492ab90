//! Prometheus metrics: what happened to deliveries, per push vendor, and how
//! long they waited and took. Gauges of the queue are read from the database
//! at scrape time, so every instance reports the shared truth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VendorLabel {
    pub vendor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub vendor: String,
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

pub struct Metrics {
    registry: Registry,
    pub outcomes: Family<OutcomeLabel, Counter>,
    pub retries: Family<VendorLabel, Counter>,
    pub queue_wait: Family<VendorLabel, Histogram, fn() -> Histogram>,
    pub delivery_latency: Family<VendorLabel, Histogram, fn() -> Histogram>,
    pub queued: Gauge,
    pub in_flight: Gauge,
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
        }
    }
}

impl Metrics {
    pub fn outcome(&self, vendor: &str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabel {
                vendor: vendor.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
