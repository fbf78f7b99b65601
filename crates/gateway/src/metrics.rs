//! Prometheus metrics. Names follow `causeway_<what>_<unit>`; labels are channel and
//! destination names from the configuration, never message contents.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `{channel}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// Channel name.
    pub channel: String,
}

/// `{channel, code}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AckLabel {
    /// Channel name.
    pub channel: String,
    /// MSA-1 sent (AA, AE, AR, CA, CE, CR) or `none` when no ACK was due.
    pub code: String,
}

/// `{channel, destination}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// Channel name.
    pub channel: String,
    /// Destination name.
    pub destination: String,
}

/// `{channel, kind}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FramingLabel {
    /// Channel name.
    pub channel: String,
    /// The framing event kind (`skipped_garbage`, `frame_too_large`, ...).
    pub kind: String,
}

/// `{destination}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// Destination name.
    pub destination: String,
}

/// Every metric the gateway keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Messages received (parsed as HL7), by channel.
    pub received: Family<ChannelLabel, Counter>,
    /// Bytes of messages received, by channel.
    pub received_bytes: Family<ChannelLabel, Counter>,
    /// Acknowledgements sent, by channel and code.
    pub acked: Family<AckLabel, Counter>,
    /// Resent messages recognised as duplicates.
    pub duplicates: Family<ChannelLabel, Counter>,
    /// Messages no destination wanted (stored and acknowledged).
    pub filtered: Family<ChannelLabel, Counter>,
    /// Frames that were not HL7 (quarantined, answered AR).
    pub quarantined: Family<ChannelLabel, Counter>,
    /// Messages that could not be stored (answered AE/CE).
    pub store_failures: Family<ChannelLabel, Counter>,
    /// Deliveries acknowledged by their destination.
    pub delivered: Family<DestinationLabel, Counter>,
    /// Failed attempts that will be retried.
    pub failed: Family<DestinationLabel, Counter>,
    /// Deliveries given up on.
    pub dead_lettered: Family<DestinationLabel, Counter>,
    /// Seconds one successful delivery attempt took (a file run's time is shared by its
    /// files).
    pub delivery_seconds: Family<DestinationLabel, Histogram>,
    /// Deliveries waiting per destination (updated every few seconds from the store).
    pub queue_depth: Family<QueueLabel, Gauge>,
    /// Dead letters per destination.
    pub dead_letters: Family<QueueLabel, Gauge>,
    /// Age in seconds of the oldest waiting delivery per destination (0 when none).
    pub oldest_pending_seconds: Family<QueueLabel, Gauge>,
    /// MLLP connections open now, by channel.
    pub open_connections: Family<ChannelLabel, Gauge>,
    /// Connections closed at once because the channel's connection limit was reached.
    pub connections_refused: Family<ChannelLabel, Counter>,
    /// Framing anomalies (stray bytes, oversized frames, missing end blocks, ...).
    pub framing_anomalies: Family<FramingLabel, Counter>,
    /// 1 while this node holds the destination's delivery lease, else 0.
    pub lease_held: Family<QueueLabel, Gauge>,
    /// Leases this node took over from a node (or an earlier run of itself) that had not
    /// released them.
    pub lease_takeovers: Family<QueueLabel, Counter>,
    /// Deliveries at the head of a queue sent after a takeover that the previous holder may
    /// already have sent (in flight, or sent with its record still on the way, when it
    /// stopped): at most 9 per takeover (a file destination: its run, up to 64).
    pub lease_possible_duplicates: Family<QueueLabel, Counter>,
    /// Always 1, labelled with this node's id (`store.node_id`).
    pub node_info: Family<NodeLabel, Gauge>,
}

/// `{node_id}`
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// This node's id in the delivery leases.
    pub node_id: String,
}

fn histogram() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set (histograms with the gateway's buckets).
    pub fn new() -> Metrics {
        Metrics {
            received: Family::default(),
            received_bytes: Family::default(),
            acked: Family::default(),
            duplicates: Family::default(),
            filtered: Family::default(),
            quarantined: Family::default(),
            store_failures: Family::default(),
            delivered: Family::default(),
            failed: Family::default(),
            dead_lettered: Family::default(),
            delivery_seconds: Family::new_with_constructor(histogram),
            queue_depth: Family::default(),
            dead_letters: Family::default(),
            oldest_pending_seconds: Family::default(),
            open_connections: Family::default(),
            connections_refused: Family::default(),
            framing_anomalies: Family::default(),
            lease_held: Family::default(),
            lease_takeovers: Family::default(),
            lease_possible_duplicates: Family::default(),
            node_info: Family::default(),
        }
    }

    /// Registers everything in `registry` under the `causeway` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("causeway");
        r.register(
            "messages_received",
            "Messages received, by channel",
            self.received.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes of messages received, by channel",
            self.received_bytes.clone(),
        );
        r.register(
            "messages_acked",
            "Acknowledgements sent, by channel and MSA-1 code",
            self.acked.clone(),
        );
        r.register(
            "messages_duplicate",
            "Resent messages recognised as duplicates",
            self.duplicates.clone(),
        );
        r.register(
            "messages_filtered",
            "Messages no destination wanted",
            self.filtered.clone(),
        );
        r.register(
            "messages_quarantined",
            "Frames that were not HL7",
            self.quarantined.clone(),
        );
        r.register(
            "store_failures",
            "Messages that could not be stored",
            self.store_failures.clone(),
        );
        r.register(
            "deliveries_delivered",
            "Deliveries acknowledged by the destination",
            self.delivered.clone(),
        );
        r.register(
            "deliveries_failed",
            "Failed delivery attempts that will be retried",
            self.failed.clone(),
        );
        r.register(
            "deliveries_dead_lettered",
            "Deliveries given up on",
            self.dead_lettered.clone(),
        );
        r.register(
            "delivery_seconds",
            "Duration of successful delivery attempts (a file destination's run: each file's share)",
            self.delivery_seconds.clone(),
        );
        r.register(
            "queue_depth",
            "Deliveries waiting, by destination",
            self.queue_depth.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters, by destination",
            self.dead_letters.clone(),
        );
        r.register(
            "oldest_pending_seconds",
            "Age of the oldest waiting delivery, by destination",
            self.oldest_pending_seconds.clone(),
        );
        r.register(
            "lease_held",
            "1 while this node holds the destination's delivery lease",
            self.lease_held.clone(),
        );
        r.register(
            "lease_takeovers",
            "Delivery leases taken over from a node that had not released them",
            self.lease_takeovers.clone(),
        );
        r.register(
            "lease_possible_duplicates",
            "Deliveries at the head of a queue sent after a lease takeover that the previous holder may have sent",
            self.lease_possible_duplicates.clone(),
        );
        r.register(
            "node_info",
            "This node's id in the delivery leases",
            self.node_info.clone(),
        );
    }

    /// Whether this node holds `destination`'s lease.
    pub fn lease_held(&self, destination: &str, held: bool) {
        self.lease_held
            .get_or_create(&QueueLabel {
                destination: destination.to_owned(),
            })
            .set(i64::from(held));
    }

    /// A lease was taken over.
    pub fn lease_takeover(&self, destination: &str) {
        self.lease_takeovers
            .get_or_create(&QueueLabel {
                destination: destination.to_owned(),
            })
            .inc();
    }

    /// A head was re-sent after a takeover.
    pub fn lease_possible_duplicate(&self, destination: &str) {
        self.lease_possible_duplicates
            .get_or_create(&QueueLabel {
                destination: destination.to_owned(),
            })
            .inc();
    }

    fn ch(channel: &str) -> ChannelLabel {
        ChannelLabel {
            channel: channel.to_owned(),
        }
    }

    fn dest(channel: &str, destination: &str) -> DestinationLabel {
        DestinationLabel {
            channel: channel.to_owned(),
            destination: destination.to_owned(),
        }
    }

    /// A message arrived.
    pub fn received(&self, channel: &str, bytes: usize) {
        self.received.get_or_create(&Self::ch(channel)).inc();
        self.received_bytes
            .get_or_create(&Self::ch(channel))
            .inc_by(bytes as u64);
    }

    /// An ACK went out (`code` `none` when no ACK was due).
    pub fn acked(&self, channel: &str, code: &str) {
        self.acked
            .get_or_create(&AckLabel {
                channel: channel.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// A delivery succeeded.
    pub fn delivered(&self, channel: &str, destination: &str, took: Duration) {
        let label = Self::dest(channel, destination);
        self.delivered.get_or_create(&label).inc();
        self.delivery_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// An attempt failed and will be retried.
    pub fn failed(&self, channel: &str, destination: &str) {
        self.failed
            .get_or_create(&Self::dest(channel, destination))
            .inc();
    }

    /// A delivery was dead-lettered.
    pub fn dead_lettered(&self, channel: &str, destination: &str) {
        self.dead_lettered
            .get_or_create(&Self::dest(channel, destination))
            .inc();
    }

    /// Counts one of the per-channel events.
    pub fn count(family: &Family<ChannelLabel, Counter>, channel: &str) {
        family.get_or_create(&Self::ch(channel)).inc();
    }
}

/// Feeds a channel's connection and framing events from the MLLP server into the metrics.
#[derive(Debug)]
pub struct ChannelObserver {
    /// Channel name.
    pub channel: String,
    /// Where to count.
    pub metrics: std::sync::Arc<Metrics>,
}

impl causeway_mllp::server::Observer for ChannelObserver {
    fn connection_opened(&self, _conn: &causeway_mllp::server::ConnectionInfo) {
        self.metrics
            .open_connections
            .get_or_create(&Metrics::ch(&self.channel))
            .inc();
    }

    fn connection_closed(&self, _conn: &causeway_mllp::server::ConnectionInfo) {
        self.metrics
            .open_connections
            .get_or_create(&Metrics::ch(&self.channel))
            .dec();
    }

    fn connection_refused(&self, _peer: std::net::SocketAddr) {
        Metrics::count(&self.metrics.connections_refused, &self.channel);
    }

    fn framing_event(
        &self,
        _conn: &causeway_mllp::server::ConnectionInfo,
        event: &causeway_mllp::frame::FramingEvent,
    ) {
        let label = FramingLabel {
            channel: self.channel.clone(),
            kind: event.kind().to_owned(),
        };
        self.metrics.framing_anomalies.get_or_create(&label).inc();
    }
}

/// The store's writer at each scrape: batches (group commit), the writes in them, and the
/// durable writes that made them so, with their time (how long the disk, or the database
/// server, makes a sender wait for its ACK).
#[derive(Debug)]
pub struct StoreCollector {
    store: std::sync::Arc<dyn causeway_store::Store>,
}

impl StoreCollector {
    /// Reports `store`'s writer.
    pub fn new(store: std::sync::Arc<dyn causeway_store::Store>) -> StoreCollector {
        StoreCollector { store }
    }
}

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let stats = self.store.writer_stats();
        let counts = [
            (
                "store_batches",
                "Write batches the store committed (group commit; one durable write may cover several)",
                stats.commits,
            ),
            (
                "store_batch_writes",
                "Writes (ingests and others) run in batches; over causeway_store_batches_total, the mean batch",
                stats.requests,
            ),
            (
                "store_failed_batches",
                "Write batches that failed (every write in them answered as unavailable)",
                stats.failed_commits,
            ),
            (
                "store_syncs",
                "Durable writes, failed ones included: an ingest journal write and sync, a WAL sync, or a PostgreSQL batch transaction",
                stats.syncs,
            ),
        ];
        for (name, help, value) in counts {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let seconds = ConstCounter::new(stats.sync_time.as_secs_f64());
        seconds.encode(encoder.encode_descriptor(
            "store_sync_seconds",
            "Time the durable writes took; over causeway_store_syncs_total, the mean wait for the disk",
            None,
            seconds.metric_type(),
        )?)?;
        Ok(())
    }
}
