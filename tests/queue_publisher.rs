//! The publisher against a real RabbitMQ (`MDTI_TEST_AMQP_URL`) when the broker says no: a
//! publish the broker refuses costs that one message, not the channel every later hand-over
//! needs; a lost connection says so; and the copies it makes carry no producer's expiration.
//!
//! Every test uses its own queue prefix, deleted at the end, also when it fails.

use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions};
use std::sync::Arc;

use lapin::{BasicProperties, Channel};
use mdti_worker::lane::Lane;
use mdti_worker::queue::{Publisher, Topology};
use serde_json::json;

mod support;
use support::{amqp_url, broker_connection, test_topology, with_cleanup};

async fn get(channel: &Channel, queue: &str) -> Option<BasicGetMessage> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic_get")
}

/// Delete `exchange` behind the publisher's back, as an operator (or another deployment) might.
async fn delete_exchange_elsewhere(exchange: &str) {
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "deleted".into()).await.unwrap();
}

fn delivery_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("msg-1".into())
}

async fn connected_publisher(topology: &Topology) -> Publisher {
    Publisher::connect(&amqp_url(), topology.clone())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_publish_the_broker_refuses_costs_that_message_not_the_publisher() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let publisher = connected_publisher(&topology).await;
        delete_exchange_elsewhere(&topology.events_exchange()).await;

        // NOT_FOUND: the broker refuses the event and closes the channel it came on.
        let refused = publisher
            .publish_event("actor.hit", &json!({"hit": 1}))
            .await
            .expect_err("the events exchange is gone");
        assert!(!refused.is_connection_lost(), "{refused}");
        assert_eq!(publisher.failed_publishes(), 1);

        // The hand-overs after it work on the same publisher, and the event exchange is back.
        publisher
            .send_to_dead_letter(
                Lane::Bulk,
                b"evil.example",
                &delivery_props(),
                1,
                "code",
                "reason",
            )
            .await
            .expect("a dead letter after the refusal");
        publisher
            .publish_event("actor.hit", &json!({"hit": 2}))
            .await
            .expect("an event after the refusal");
        let dead = get(&publisher.channel(), &topology.dead_letter_queue()).await;
        assert_eq!(dead.expect("in the DLQ").delivery.data, b"evil.example");
        assert_eq!(
            publisher.failed_publishes(),
            1,
            "only the refused event failed"
        );
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_publisher_on_a_shared_connection_gets_a_new_channel_too() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let connection = Arc::new(broker_connection().await);
        let publisher = Publisher::on_connection(&connection, topology.clone())
            .await
            .unwrap();
        delete_exchange_elsewhere(&topology.events_exchange()).await;
        publisher
            .publish_event("actor.hit", &json!({"hit": 1}))
            .await
            .expect_err("the events exchange is gone");

        publisher
            .send_to_retry(
                Lane::Bulk,
                b"evil.example",
                &delivery_props(),
                2,
                "graph_unavailable",
                "throttled",
            )
            .await
            .expect("a retry after the refusal");
        assert_eq!(publisher.failed_publishes(), 1);
        publisher.close().await.unwrap();
        connection.close(200, "done".into()).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_publisher_whose_connection_is_gone_says_so() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let connection = Arc::new(broker_connection().await);
        let publisher = Publisher::on_connection(&connection, topology.clone())
            .await
            .unwrap();
        connection.close(200, "gone".into()).await.unwrap();

        let error = publisher
            .send_to_dead_letter(
                Lane::Bulk,
                b"evil.example",
                &delivery_props(),
                1,
                "code",
                "reason",
            )
            .await
            .expect_err("no connection");
        assert!(error.is_connection_lost(), "{error:?}");
        assert_eq!(publisher.failed_publishes(), 1);
    })
    .await;
}

/// A borrowed connection cannot be kept, so a publisher made with one cannot replace its
/// channel: once the broker closed it, the answer is "connect again", not a failure per message.
#[tokio::test]
async fn a_publisher_on_a_borrowed_connection_asks_for_a_new_one_once_its_channel_is_gone() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let connection = broker_connection().await;
        let publisher = Publisher::on_connection(&connection, topology.clone())
            .await
            .unwrap();
        delete_exchange_elsewhere(&topology.events_exchange()).await;
        let refused = publisher
            .publish_event("actor.hit", &json!({"hit": 1}))
            .await
            .expect_err("the events exchange is gone");
        assert!(!refused.is_connection_lost(), "{refused}");

        let error = publisher
            .send_to_retry(
                Lane::Bulk,
                b"evil.example",
                &delivery_props(),
                2,
                "graph_unavailable",
                "throttled",
            )
            .await
            .expect_err("no channel and no way to open one");
        assert!(error.is_connection_lost(), "{error:?}");
        assert_eq!(publisher.failed_publishes(), 2);
        connection.close(200, "done".into()).await.unwrap();
    })
    .await;
}
#[tokio::test]
async fn retry_and_dead_letter_copies_drop_the_producers_expiration() {
    // The default retry delay (30 s) keeps the retry copy in its queue while we look.
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let publisher = connected_publisher(&topology).await;
        let expiring = delivery_props().with_expiration("60000".into());
        publisher
            .send_to_dead_letter(Lane::Bulk, b"dead", &expiring, 5, "gave_up", "gave up")
            .await
            .unwrap();
        publisher
            .send_to_retry(
                Lane::Bulk,
                b"retried",
                &expiring,
                2,
                "graph_unavailable",
                "throttled",
            )
            .await
            .unwrap();

        for queue in [topology.dead_letter_queue(), topology.retry_queue()] {
            let message = get(&publisher.channel(), &queue)
                .await
                .unwrap_or_else(|| panic!("nothing in {queue}"));
            let props = &message.delivery.properties;
            assert_eq!(props.expiration(), &None, "{queue} got a TTL");
            assert_eq!(props.message_id().as_ref().unwrap().as_str(), "msg-1");
        }
        publisher.close().await.unwrap();
    })
    .await;
}
