//! An e-commerce service publishing order events: every event of an order is keyed by the
//! order id, so all of an order's events land in one partition, in the order they happened.
//!
//! ```text
//! scripts/cluster.sh up
//! cargo run -p runnel-client --example orders            # 200 orders, 4 events each
//! RUNNEL_BOOTSTRAP=127.0.0.1:50051 ORDERS=1000 cargo run -p runnel-client --example orders
//! runnel consume orders --from-beginning --print-key | head
//! ```
//!
//! It creates the topic `orders` (6 partitions, replication factor 3 or fewer) with `Admin`
//! when it is missing, sends the events with an idempotent `Producer` (retries after a leader
//! change never write an event twice), waits for every acknowledgement, and prints where the
//! events went. It stops after `ORDERS` orders (default 200).

use std::collections::BTreeMap;
use std::time::Instant;

use runnel_client::ClientError;
use runnel_client::admin::{Admin, NewTopic};
use runnel_client::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 6;
/// What happens to an order, in order.
const STEPS: [&str; 4] = ["created", "paid", "packed", "shipped"];
/// At most this many orders, whatever `ORDERS` says: the example stays short.
const ORDERS_MAX: u64 = 100_000;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let bootstrap: Vec<String> = std::env::var("RUNNEL_BOOTSTRAP")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let orders: u64 =
        std::env::var("ORDERS").ok().and_then(|n| n.parse().ok()).unwrap_or(200).clamp(1, ORDERS_MAX);

    // Every node serves both the controller and the broker API on its gRPC port.
    let admin = Admin::new(bootstrap.clone());
    if !admin.topic_exists(TOPIC).await? {
        let topic = admin.create_topic(NewTopic::new(TOPIC, PARTITIONS)).await?;
        println!("created topic {} ({} partitions, id {})", topic.name, topic.partitions.len(), topic.id);
    }

    let producer = Producer::new(ProducerConfig::new(bootstrap)).await?;
    let started = Instant::now();
    let mut pending: Vec<(String, &str, DeliveryFuture)> = Vec::new();
    for n in 0..orders {
        let order_id = format!("order-{n:06}");
        for step in STEPS {
            let event =
                format!(r#"{{"order":"{order_id}","event":"{step}","amount_cents":{}}}"#, 1000 + n % 9000);
            let record = ProducerRecord::new(TOPIC, event).key(order_id.clone()).header("event", step);
            pending.push((order_id.clone(), step, producer.send(record).await));
        }
    }

    // Every event of an order sits in one partition, at rising offsets.
    let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
    let mut last: BTreeMap<String, (u32, i64)> = BTreeMap::new();
    for (order_id, step, delivery) in pending {
        let at = delivery.await?;
        if let Some(&(partition, offset)) = last.get(&order_id)
            && (partition != at.partition || offset >= at.offset)
        {
            let message =
                format!("{order_id} {step} at {}/{} after {partition}/{offset}", at.partition, at.offset);
            return Err(ClientError::new(-1, "OUT_OF_PLACE", message));
        }
        last.insert(order_id, (at.partition, at.offset));
        *per_partition.entry(at.partition).or_default() += 1;
    }
    producer.close().await;

    let events: u64 = per_partition.values().sum();
    println!("{events} events of {orders} orders acknowledged in {:.2?}", started.elapsed());
    for (partition, count) in per_partition {
        println!("  partition {partition}: {count} events");
    }
    let stats = producer.stats();
    println!(
        "{} batches, {} retried, {} duplicates dropped by the brokers",
        stats.batches, stats.retries, stats.duplicates
    );
    Ok(())
}
