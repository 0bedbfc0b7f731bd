//! `dlq list` and `dlq replay` against the real RabbitMQ (`MDTI_TEST_AMQP_URL`), each test with
//! its own queue prefix, deleted at the end.

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use mdti_worker::lane::Lane;
use mdti_worker::queue::dlq::{DeadLetter, DeadLetterQueue, ReplayFilter, REPLAYED_HEADER};
use mdti_worker::queue::{attempt_of, Publisher, Topology, REASON_CODE_HEADER, REASON_HEADER};

mod support;
use support::{amqp_url, broker_connection, test_topology, with_cleanup};

/// (message id, reason code, reason, body) of the dead letters each test starts with, in order.
const LETTERS: [(&str, &str, &str, &str); 5] = [
    (
        "m-1",
        "gave_up",
        "gave up after 5 deliveries: Graph 503",
        "evil.example",
    ),
    (
        "m-2",
        "invalid_json",
        "expected value at line 1 column 1",
        "{not json",
    ),
    (
        "m-3",
        "gave_up",
        "gave up after 5 deliveries: Postgres down",
        "8.8.8.8",
    ),
    ("m-4", "invalid_json", "EOF while parsing", "[{\"value\":"),
    (
        "m-5",
        "gave_up",
        "gave up after 5 deliveries: timeout",
        "contoso.com",
    ),
];

/// Dead-letter every one of [`LETTERS`] the way the worker does, on its fifth attempt, and
/// connect the dead-letter tools.
async fn dead_letter_all(topology: &Topology) -> DeadLetterQueue {
    let publisher = Publisher::connect(&amqp_url(), topology.clone())
        .await
        .unwrap();
    for (id, code, reason, body) in LETTERS {
        let props = BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("text/plain".into());
        publisher
            .send_to_dead_letter(Lane::Bulk, body.as_bytes(), &props, 5, code, reason)
            .await
            .unwrap();
    }
    publisher.close().await.unwrap();
    DeadLetterQueue::connect(&amqp_url(), topology.clone())
        .await
        .unwrap()
}

async fn message_count(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// Everything in `queue` now, taken out (the queue is the test's own).
async fn drain(channel: &Channel, queue: &str) -> Vec<BasicGetMessage> {
    let mut out = Vec::new();
    // Bounded: the tests put at most five messages anywhere.
    for _ in 0..50 {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => out.push(message),
            None => break,
        }
    }
    out
}

fn ids(letters: &[DeadLetter]) -> Vec<&str> {
    letters
        .iter()
        .map(|l| l.message_id.as_deref().unwrap_or("-"))
        .collect()
}

#[tokio::test]
async fn list_shows_every_dead_letter_and_consumes_none() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let dlq = dead_letter_all(&topology).await;

        let first = dlq.list(None).await.unwrap();
        assert_eq!(ids(&first), ["m-1", "m-2", "m-3", "m-4", "m-5"]);
        let m2 = &first[1];
        assert_eq!(m2.reason_code.as_deref(), Some("invalid_json"));
        assert_eq!(
            m2.reason.as_deref(),
            Some("expected value at line 1 column 1")
        );
        assert_eq!(m2.attempt, 5);
        assert_eq!(m2.replayed, 0);
        assert_eq!(m2.preview, "{not json");
        assert_eq!(m2.body_bytes, 9);

        // Listing again shows the same messages in the same order: nothing was consumed.
        assert_eq!(dlq.list(None).await.unwrap(), first);
        assert_eq!(ids(&dlq.list(Some(2)).await.unwrap()), ["m-1", "m-2"]);
        dlq.close().await.unwrap();

        let connection = broker_connection().await;
        let channel = connection.create_channel().await.unwrap();
        assert_eq!(
            message_count(&channel, &topology.dead_letter_queue()).await,
            5
        );
        assert_eq!(message_count(&channel, &topology.work_queue()).await, 0);
        connection.close(200, "done".into()).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn replay_with_a_reason_moves_exactly_the_matching_ones_back_to_work() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let dlq = dead_letter_all(&topology).await;

        let summary = dlq
            .replay(&ReplayFilter {
                reason_code: Some("gave_up".into()),
                limit: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (summary.examined, summary.replayed, summary.kept),
            (5, 3, 2)
        );

        // The rest stay, in order.
        let left = dlq.list(None).await.unwrap();
        assert_eq!(ids(&left), ["m-2", "m-4"]);
        dlq.close().await.unwrap();

        let connection = broker_connection().await;
        let channel = connection.create_channel().await.unwrap();
        let work = drain(&channel, &topology.work_queue()).await;
        let replayed: Vec<(String, String)> = work
            .iter()
            .map(|m| {
                let props = &m.delivery.properties;
                (
                    props.message_id().as_ref().unwrap().to_string(),
                    String::from_utf8(m.delivery.data.clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            replayed,
            [
                ("m-1".to_owned(), "evil.example".to_owned()),
                ("m-3".to_owned(), "8.8.8.8".to_owned()),
                ("m-5".to_owned(), "contoso.com".to_owned()),
            ]
        );
        for message in &work {
            let props = &message.delivery.properties;
            let headers = props.headers().as_ref().unwrap().inner();
            assert_eq!(attempt_of(props), 1, "a replay gets fresh attempts");
            assert!(!headers.contains_key(REASON_HEADER));
            assert!(!headers.contains_key(REASON_CODE_HEADER));
            assert!(headers.contains_key(REPLAYED_HEADER));
            assert_eq!(
                props.content_type().as_ref().unwrap().as_str(),
                "text/plain"
            );
        }
        // Nothing lost: 3 in work + 2 still dead = 5.
        assert_eq!(
            message_count(&channel, &topology.dead_letter_queue()).await,
            2
        );
        connection.close(200, "done".into()).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn replay_stops_at_its_limit_and_a_second_replay_takes_the_rest() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let dlq = dead_letter_all(&topology).await;

        let one = dlq
            .replay(&ReplayFilter {
                reason_code: Some("invalid_json".into()),
                limit: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(one.replayed, 1);
        assert_eq!(
            ids(&dlq.list(None).await.unwrap()),
            ["m-1", "m-3", "m-4", "m-5"]
        );

        let rest = dlq.replay(&ReplayFilter::default()).await.unwrap();
        assert_eq!((rest.examined, rest.replayed, rest.kept), (4, 4, 0));
        assert!(dlq.list(None).await.unwrap().is_empty());
        dlq.close().await.unwrap();

        let connection = broker_connection().await;
        let channel = connection.create_channel().await.unwrap();
        let work = drain(&channel, &topology.work_queue()).await;
        let mut moved: Vec<String> = work
            .iter()
            .map(|m| {
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .to_string()
            })
            .collect();
        moved.sort();
        assert_eq!(
            moved,
            ["m-1", "m-2", "m-3", "m-4", "m-5"],
            "each exactly once"
        );
        connection.close(200, "done".into()).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_replayed_message_leaves_its_expiration_behind() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let dlq = DeadLetterQueue::connect(&amqp_url(), topology.clone())
            .await
            .unwrap();
        // A dead letter that kept its producer's per-message TTL (copied by an older worker,
        // or by another tool), long enough not to expire during the test.
        let connection = broker_connection().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let props = BasicProperties::default()
            .with_message_id("m-ttl".into())
            .with_expiration("600000".into());
        channel
            .basic_publish(
                "".into(),
                topology.dead_letter_queue().as_str().into(),
                BasicPublishOptions::default(),
                b"contoso.com",
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();

        let summary = dlq.replay(&ReplayFilter::default()).await.unwrap();
        assert_eq!(summary.replayed, 1);
        dlq.close().await.unwrap();

        let work = drain(&channel, &topology.work_queue()).await;
        assert_eq!(work.len(), 1, "replayed to the work queue");
        let replayed = &work[0].delivery.properties;
        assert_eq!(replayed.message_id().as_ref().unwrap().as_str(), "m-ttl");
        assert_eq!(replayed.expiration(), &None, "the replay kept a TTL");
        connection.close(200, "done".into()).await.unwrap();
    })
    .await;
}
