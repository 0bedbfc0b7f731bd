//! The broker side, pinned against a real RabbitMQ (`MDTI_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), plus the message contract and the `publish` line
//! parser, which need no broker.
//!
//! Every broker test uses its own random prefix and deletes its queues and exchanges at the end,
//! also when it fails.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use mdti_worker::lane::Lane;
use mdti_worker::publish::{self, CsvColumn, InputFormat, PublishOptions};
use mdti_worker::queue::message::{
    decode, ChainRequest, DecodeError, DecodeLimits, Item, ObservableRequest,
};
use mdti_worker::queue::{
    attempt_of, PublishError, Publisher, Topology, ATTEMPT_HEADER, REASON_CODE_HEADER,
    REASON_HEADER,
};
use serde_json::json;

mod support;
use support::{amqp_url, with_cleanup};

fn topology(retry_delay: Duration) -> Topology {
    Topology {
        prefix: format!("t-{}", uuid::Uuid::new_v4().simple()),
        retry_delay,
    }
}

async fn get(channel: &Channel, queue: &str) -> Option<BasicGetMessage> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic_get")
}

/// Poll `queue` until a message arrives or `within` passed.
async fn get_within(channel: &Channel, queue: &str, within: Duration) -> Option<BasicGetMessage> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(message) = get(channel, queue).await {
            return Some(message);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

fn header_text(props: &BasicProperties, name: &str) -> Option<String> {
    match header(props, name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8(text.as_bytes().to_vec()).unwrap()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        other => panic!("header {name} is not a string: {other:?}"),
    }
}

fn message_id(props: &BasicProperties) -> Option<String> {
    props.message_id().as_ref().map(|id| id.to_string())
}

/// Properties of a delivery as the worker would see them on a first attempt.
fn delivery_props() -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("msg-1".into())
        .with_headers(headers)
}

// ---------------------------------------------------------------------------------------------
// Topology and publisher, against RabbitMQ
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn declare_is_idempotent() {
    let t = topology(Duration::from_secs(30));
    let other_delay = Topology {
        prefix: t.prefix.clone(),
        retry_delay: Duration::from_secs(5),
    };
    with_cleanup(&[&t, &other_delay], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        let channel = &publisher.channel();
        t.declare(channel).await.expect("second declare");
        t.declare(channel).await.expect("third declare");
        // Another process declaring the same topology.
        let again = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        // A changed retry delay is a new retry queue, not PRECONDITION_FAILED.
        assert_ne!(other_delay.retry_queue(), t.retry_queue());
        other_delay
            .declare(&again.channel())
            .await
            .expect("other delay");
        // Everything exists (passive declares fail on a missing queue).
        for queue in [t.work_queue(), t.retry_queue(), t.dead_letter_queue()] {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("{queue} missing: {e}"));
        }
        again.close().await.unwrap();
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn publish_batch_is_confirmed_and_lands_in_the_work_queue() {
    let t = topology(Duration::from_secs(30));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        let items = (0..3)
            .map(|n| {
                (
                    format!("feed-{n}"),
                    format!("{{\"value\": \"10.0.0.{n}\"}}").into_bytes(),
                    "application/json".to_string(),
                    format!("batch-{n}"),
                )
            })
            .collect();
        assert_eq!(publisher.publish_batch(items).await.unwrap(), 3);

        let channel = &publisher.channel();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let message = get(channel, &t.work_queue()).await.expect("3 messages");
            let props = &message.delivery.properties;
            assert_eq!(*props.delivery_mode(), Some(2), "persistent");
            assert_eq!(
                props.content_type().as_ref().map(|c| c.as_str()),
                Some("application/json")
            );
            assert_eq!(attempt_of(props), 1);
            assert!(
                header(props, ATTEMPT_HEADER).is_some(),
                "attempt written explicitly"
            );
            let items = decode(
                &message.delivery.data,
                Some("application/json"),
                &DecodeLimits::default(),
            )
            .unwrap();
            let Item::Request(request) = &items[0] else {
                panic!("{items:?}")
            };
            seen.push((message_id(props).unwrap(), request.value.clone()));
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("batch-0".to_string(), "10.0.0.0".to_string()),
                ("batch-1".to_string(), "10.0.0.1".to_string()),
                ("batch-2".to_string(), "10.0.0.2".to_string()),
            ]
        );
        assert!(get(channel, &t.work_queue()).await.is_none());

        // The single-message variant too.
        publisher
            .publish_observables("feed", b"8.8.8.8\n", "text/plain", "single")
            .await
            .unwrap();
        let message = get(channel, &t.work_queue()).await.expect("single");
        assert_eq!(
            message_id(&message.delivery.properties).as_deref(),
            Some("single")
        );
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn send_to_retry_keeps_properties_and_sets_attempt_and_reason() {
    // A long delay, so the message is still in the retry queue when we look.
    let t = topology(Duration::from_secs(60));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        let reason = format!("Graph answered 503 {}", "x".repeat(2000));
        publisher
            .send_to_retry(
                Lane::Bulk,
                b"evil[.]com",
                &delivery_props(),
                2,
                "graph_unavailable",
                &reason,
            )
            .await
            .unwrap();

        let message = get(&publisher.channel(), &t.retry_queue())
            .await
            .expect("in the retry queue");
        let props = &message.delivery.properties;
        assert_eq!(message.delivery.data, b"evil[.]com");
        assert_eq!(attempt_of(props), 2);
        assert_eq!(message_id(props).as_deref(), Some("msg-1"));
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
        assert_eq!(header_text(props, "x-custom").as_deref(), Some("kept"));
        let stored_reason = header_text(props, REASON_HEADER).unwrap();
        assert!(stored_reason.starts_with("Graph answered 503 xxx"));
        assert!(
            stored_reason.chars().count() <= 510,
            "reason truncated, got {} chars",
            stored_reason.chars().count()
        );
        assert_eq!(
            header_text(props, REASON_CODE_HEADER).as_deref(),
            Some("graph_unavailable")
        );
        assert!(get(&publisher.channel(), &t.work_queue()).await.is_none());
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn retried_message_comes_back_to_the_work_queue_after_the_delay() {
    let t = topology(Duration::from_secs(1));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        publisher
            .send_to_retry(
                Lane::Bulk,
                b"evil[.]com",
                &delivery_props(),
                3,
                "graph_unavailable",
                "throttled",
            )
            .await
            .unwrap();
        let message = get_within(
            &publisher.channel(),
            &t.work_queue(),
            Duration::from_secs(10),
        )
        .await
        .expect("back in the work queue within 10 s");
        let props = &message.delivery.properties;
        assert_eq!(message.delivery.data, b"evil[.]com");
        assert_eq!(attempt_of(props), 3);
        assert_eq!(
            header_text(props, REASON_HEADER).as_deref(),
            Some("throttled")
        );
        assert_eq!(message_id(props).as_deref(), Some("msg-1"));
        assert!(
            header(props, "x-death").is_some(),
            "dead-lettered by the broker"
        );
        assert!(get(&publisher.channel(), &t.retry_queue()).await.is_none());
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn send_to_dead_letter_sets_reason_and_code() {
    let t = topology(Duration::from_secs(30));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        publisher
            .send_to_dead_letter(
                Lane::Bulk,
                b"{\"value\": 42}",
                &delivery_props(),
                5,
                "invalid_json",
                "item 0: `value` must be a string, got a number",
            )
            .await
            .unwrap();
        let message = get(&publisher.channel(), &t.dead_letter_queue())
            .await
            .expect("in the DLQ");
        let props = &message.delivery.properties;
        assert_eq!(message.delivery.data, b"{\"value\": 42}");
        assert_eq!(attempt_of(props), 5);
        assert_eq!(
            header_text(props, REASON_CODE_HEADER).as_deref(),
            Some("invalid_json")
        );
        assert_eq!(
            header_text(props, REASON_HEADER).as_deref(),
            Some("item 0: `value` must be a string, got a number")
        );
        assert_eq!(header_text(props, "x-custom").as_deref(), Some("kept"));
        assert_eq!(message_id(props).as_deref(), Some("msg-1"));
        assert_eq!(*props.delivery_mode(), Some(2));
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_missing_queue_is_an_error_not_a_silent_loss() {
    let t = topology(Duration::from_secs(30));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        publisher
            .channel()
            .queue_delete(
                t.dead_letter_queue().as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
        let error = publisher
            .send_to_dead_letter(Lane::Bulk, b"x", &delivery_props(), 1, "code", "reason")
            .await
            .unwrap_err();
        assert!(
            matches!(error, PublishError::Unroutable { .. }),
            "{error:?}"
        );
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn events_go_to_the_events_exchange() {
    let t = topology(Duration::from_secs(30));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        // Nobody listens yet: still fine.
        publisher
            .publish_event("actor.hit", &json!({"ignored": true}))
            .await
            .unwrap();

        let channel = &publisher.channel();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = queue.name().to_string();
        channel
            .queue_bind(
                queue.as_str().into(),
                t.events_exchange().as_str().into(),
                "actor.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let event = json!({"actor": "Storm-0000", "value": "evil.com"});
        publisher.publish_event("actor.hit", &event).await.unwrap();
        let message = get(channel, &queue).await.expect("event");
        let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
        assert_eq!(body, event);
        assert_eq!(
            message
                .delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(*message.delivery.properties.delivery_mode(), Some(2));
        publisher.close().await.unwrap();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The message contract
// ---------------------------------------------------------------------------------------------

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn request(index: usize, value: &str) -> ObservableRequest {
    ObservableRequest {
        index,
        value: value.to_string(),
        kind: None,
        enrichers: None,
        force: false,
        chain: ChainRequest::default(),
        source: None,
        context: None,
    }
}

#[test]
fn decode_single_object() {
    let body = br#"{"value": "evil[.]com", "kind": "domain", "enrichers": ["whois", "passive_dns"],
        "force": true, "source": "feed-x", "context": {"case": 7}, "unknown": [1, 2]}"#;
    let items = decode(body, Some("application/json"), &limits()).unwrap();
    assert_eq!(
        items,
        vec![Item::Request(ObservableRequest {
            index: 0,
            value: "evil[.]com".into(),
            kind: Some("domain".into()),
            enrichers: Some(vec!["whois".into(), "passive_dns".into()]),
            force: true,
            chain: ChainRequest::default(),
            source: Some("feed-x".into()),
            context: Some(json!({"case": 7})),
        })]
    );
    // Only `value` is required; the content type may be absent (sniffed).
    assert_eq!(
        decode(br#"  {"value": "1.2.3.4"}"#, None, &limits()).unwrap(),
        vec![Item::Request(request(0, "1.2.3.4"))]
    );
    // An object without value is an invalid item, not a rejected message.
    let items = decode(br#"{"kind": "domain"}"#, None, &limits()).unwrap();
    assert!(matches!(
        &items[..],
        [Item::Invalid {
            index: 0,
            code: "missing_value",
            ..
        }]
    ));
}

#[test]
fn decode_reads_the_chain_option_in_its_three_forms() {
    let chain = |body: &str| match &decode(body.as_bytes(), None, &limits()).unwrap()[0] {
        Item::Request(request) => Ok(request.chain),
        Item::Invalid { code, reason, .. } => Err((*code, reason.clone())),
    };
    assert_eq!(chain(r#"{"value": "a.com"}"#), Ok(ChainRequest::default()));
    assert_eq!(
        chain(r#"{"value": "a.com", "chain": false}"#),
        Ok(ChainRequest {
            enabled: Some(false),
            depth: None
        })
    );
    assert_eq!(
        chain(r#"{"value": "a.com", "chain": {"depth": 2}}"#),
        Ok(ChainRequest {
            enabled: None,
            depth: Some(2)
        })
    );
    let (code, reason) = chain(r#"{"value": "a.com", "chain": {"depth": 50}}"#).unwrap_err();
    assert_eq!(code, "out_of_range");
    assert!(reason.contains("chain.depth"), "{reason}");
    assert_eq!(
        chain(r#"{"value": "a.com", "chain": "yes"}"#)
            .unwrap_err()
            .0,
        "wrong_type"
    );
}

#[test]
fn decode_array_with_bad_elements_keeps_the_good_ones() {
    let body =
        br#"[{"value": "a.example"}, 42, {"value": 7}, {"value": "b.example", "force": "yes"},
        {"nothing": true}, {"value": "c.example", "context": [1, "any json"]}]"#;
    let items = decode(body, Some("application/json"), &limits()).unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(items[0], Item::Request(request(0, "a.example")));
    let invalid = |item: &Item| match item {
        Item::Invalid {
            index,
            code,
            reason,
            input,
        } => (*index, *code, reason.clone(), input.clone()),
        other => panic!("expected invalid, got {other:?}"),
    };
    let (index, code, reason, input) = invalid(&items[1]);
    assert_eq!((index, code, input.as_str()), (1, "not_an_object", "42"));
    assert_eq!(reason, "must be an object, got a number");
    let (_, code, reason, _) = invalid(&items[2]);
    assert_eq!(code, "wrong_type");
    assert_eq!(reason, "`value` must be a string, got a number");
    let (_, _, reason, _) = invalid(&items[3]);
    assert_eq!(reason, "`force` must be a boolean, got a string");
    let (_, code, _, _) = invalid(&items[4]);
    assert_eq!(code, "missing_value");
    let Item::Request(last) = &items[5] else {
        panic!("{:?}", items[5])
    };
    assert_eq!(last.index, 5);
    assert_eq!(last.context, Some(json!([1, "any json"])));
}

#[test]
fn decode_text_lines_skips_blanks_and_comments() {
    let body =
        b"# feed export\r\n8.8.8.8\r\n\r\n   # indented comment\n  evil[.]com  \n2001:db8::1";
    let items = decode(body, Some("text/plain"), &limits()).unwrap();
    assert_eq!(
        items,
        vec![
            Item::Request(request(0, "8.8.8.8")),
            Item::Request(request(1, "evil[.]com")),
            Item::Request(request(2, "2001:db8::1")),
        ]
    );
    // Sniffed as lines without a content type.
    assert_eq!(decode(body, None, &limits()).unwrap(), items);
    // Only comments: nothing to do is an error of the message.
    assert_eq!(
        decode(b"# nothing\n\n", Some("text/plain"), &limits()),
        Err(DecodeError::Empty)
    );
}

#[test]
fn decode_honours_content_type_parameters_and_case() {
    let body = br#"[{"value": "a.example"}]"#;
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        " application/json ",
    ] {
        assert_eq!(
            decode(body, Some(content_type), &limits()).unwrap(),
            vec![Item::Request(request(0, "a.example"))],
            "{content_type}"
        );
    }
    // text/plain with a charset is lines, even when it looks like JSON.
    let items = decode(body, Some("text/plain; charset=us-ascii"), &limits()).unwrap();
    assert_eq!(
        items,
        vec![Item::Request(request(0, r#"[{"value": "a.example"}]"#))]
    );
}

#[test]
fn decode_rejects_unsupported_content_types() {
    let error = decode(b"<xml/>", Some("application/xml"), &limits()).unwrap_err();
    assert_eq!(error.code(), "unsupported_content_type");
    assert!(error.to_string().contains("application/xml"), "{error}");
}

#[test]
fn decode_rejects_too_large_bodies_and_too_many_items() {
    let small = DecodeLimits {
        max_body_bytes: 16,
        max_items: 2,
    };
    let error = decode(&[b'a'; 17], None, &small).unwrap_err();
    assert_eq!(error, DecodeError::TooLarge { size: 17, max: 16 });
    assert_eq!(error.code(), "too_large");
    let error = decode(b"a\nb\nc", None, &small).unwrap_err();
    assert_eq!(error, DecodeError::TooManyItems { count: 3, max: 2 });
    let error = decode(br#"[{},{},{}]"#, None, &small).unwrap_err();
    assert_eq!(error.code(), "too_many_items");
}

#[test]
fn decode_rejects_invalid_utf8() {
    let error = decode(b"8.8.8.8\n\xff\xfe", Some("text/plain"), &limits()).unwrap_err();
    assert_eq!(error, DecodeError::NotUtf8 { offset: 8 });
    assert_eq!(error.code(), "not_utf8");
    assert!(error.to_string().contains("UTF-8"));
}

#[test]
fn decode_rejects_wrong_shapes_and_broken_json() {
    let error = decode(b"42", Some("application/json"), &limits()).unwrap_err();
    assert_eq!(error, DecodeError::WrongShape { found: "a number" });
    assert_eq!(error.code(), "wrong_shape");
    let error = decode(br#""evil.com""#, Some("application/json"), &limits()).unwrap_err();
    assert_eq!(error.code(), "wrong_shape");
    let error = decode(br#"[{"value": "a"#, None, &limits()).unwrap_err();
    assert_eq!(error.code(), "invalid_json");
    assert_eq!(decode(b"[]", None, &limits()), Err(DecodeError::Empty));
    assert_eq!(
        decode(b"  ", Some("application/json"), &limits()),
        Err(DecodeError::Empty)
    );
    // Deep nesting is an error, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        decode(deep.as_bytes(), None, &limits()).unwrap_err().code(),
        "invalid_json"
    );
}

#[test]
fn decode_echoes_input_only_truncated() {
    let long = "x".repeat(5000);
    let body = format!(r#"[{{"value": 1, "junk": "{long}"}}]"#);
    let items = decode(body.as_bytes(), None, &limits()).unwrap();
    let Item::Invalid { input, reason, .. } = &items[0] else {
        panic!("{items:?}")
    };
    assert!(input.chars().count() <= 201, "{}", input.len());
    assert!(reason.len() < 300);
}

// ---------------------------------------------------------------------------------------------
// The publish command's parser
// ---------------------------------------------------------------------------------------------

#[test]
fn parse_lines_reports_bad_lines_by_number_and_counts_duplicates() {
    let input = "# my list\n8.8.8.8\n\nevil[.]com\nthis is not an observable!\n8.8.8.8\n  8.8.8.8  \nEVIL.com\n";
    let mut seen = HashSet::new();
    let parsed = publish::parse_lines(
        input.as_bytes(),
        "list.txt",
        &PublishOptions::default(),
        &mut seen,
    );
    assert_eq!(parsed.error, None);
    assert_eq!(parsed.read, 6, "blank and comment lines are not read");
    let values: Vec<&str> = parsed.observables.iter().map(|o| o.value()).collect();
    assert_eq!(values, vec!["8.8.8.8", "evil.com"]);
    assert_eq!(parsed.duplicates, 3);
    assert_eq!(parsed.rejected.len(), 1);
    let rejection = &parsed.rejected[0];
    assert_eq!((rejection.file.as_str(), rejection.line), ("list.txt", 5));
    assert_eq!(rejection.input, "this is not an observable!");
    assert!(!rejection.reason.is_empty());
    assert!(
        rejection.to_string().starts_with("list.txt:5: "),
        "{rejection}"
    );

    // Duplicates count across inputs through `seen`.
    let parsed = publish::parse_lines(
        "8.8.8.8\n1.1.1.1\n".as_bytes(),
        "second.txt",
        &PublishOptions::default(),
        &mut seen,
    );
    assert_eq!(parsed.duplicates, 1);
    assert_eq!(parsed.observables.len(), 1);
}

#[test]
fn parse_lines_reads_csv_columns_and_json_lines() {
    let csv = "id,indicator,note\n1,8.8.8.8,\"dns, google\"\n2,,empty\n3,\"evil[.]com\",x\n";
    let options = PublishOptions {
        format: InputFormat::Csv,
        csv_column: "Indicator".parse().unwrap(),
        ..PublishOptions::default()
    };
    let parsed = publish::parse_lines(csv.as_bytes(), "iocs.csv", &options, &mut HashSet::new());
    let values: Vec<&str> = parsed.observables.iter().map(|o| o.value()).collect();
    assert_eq!(values, vec!["8.8.8.8", "evil.com"]);
    assert_eq!(parsed.read, 3, "the header row is not read");
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].line, 3);

    // A column name that is not in the header stops that input with an error.
    let options = PublishOptions {
        format: InputFormat::Csv,
        csv_column: CsvColumn::Name("missing".into()),
        ..PublishOptions::default()
    };
    let parsed = publish::parse_lines(csv.as_bytes(), "iocs.csv", &options, &mut HashSet::new());
    assert!(parsed.error.unwrap().contains("missing"));

    // By number: no header row.
    let options = PublishOptions {
        format: InputFormat::Csv,
        csv_column: CsvColumn::Number(2),
        ..PublishOptions::default()
    };
    let parsed = publish::parse_lines(
        "x,1.1.1.1\ny\n".as_bytes(),
        "n.csv",
        &options,
        &mut HashSet::new(),
    );
    assert_eq!(parsed.observables.len(), 1);
    assert_eq!(parsed.rejected[0].line, 2);

    let jsonl = "{\"value\": \"8.8.8.8\"}\n\"evil[.]com\"\n{\"kind\": \"domain\"}\nnot json\n";
    let options = PublishOptions {
        format: InputFormat::Jsonl,
        ..PublishOptions::default()
    };
    let parsed = publish::parse_lines(jsonl.as_bytes(), "x.jsonl", &options, &mut HashSet::new());
    assert_eq!(parsed.observables.len(), 2);
    let lines: Vec<usize> = parsed.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![3, 4]);
}

#[test]
fn parse_lines_rejects_invalid_utf8_lines_and_goes_on() {
    let input: &[u8] = b"8.8.8.8\n\xff\xfe.example\n1.1.1.1\n";
    let parsed = publish::parse_lines(
        input,
        "bin",
        &PublishOptions::default(),
        &mut HashSet::new(),
    );
    assert_eq!(parsed.observables.len(), 2);
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].line, 2);
    assert!(parsed.rejected[0].reason.contains("UTF-8"));
}

#[tokio::test]
async fn publish_run_sends_confirmed_batches_the_worker_can_decode() {
    let t = topology(Duration::from_secs(30));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        let options = PublishOptions {
            source: Some("unit-test".into()),
            batch_size: 2,
            progress: false,
            report_lines: false,
            ..PublishOptions::default()
        };
        let inputs: Vec<Box<dyn std::io::BufRead + Send>> = vec![
            Box::new("8.8.8.8\n1.1.1.1\nbad value here!\n".as_bytes()),
            Box::new("# second\nevil[.]com\n8.8.8.8\n9.9.9.9\n".as_bytes()),
        ];
        let names = vec!["a.txt".to_string(), "b.txt".to_string()];
        let summary = publish::run(options, &publisher, inputs, names)
            .await
            .unwrap();
        assert_eq!(summary.read, 6);
        assert_eq!(summary.published, 4);
        assert_eq!(summary.messages, 2);
        assert_eq!(summary.rejected, 1);
        assert_eq!(summary.duplicates, 1);
        assert_eq!(summary.not_published, 0);
        assert!(!summary.is_success(), "a rejected line fails the command");
        assert_eq!(summary.exit_code(), 1);
        assert!(summary.to_string().contains("published 4"), "{summary}");

        let mut values = Vec::new();
        let mut ids = HashSet::new();
        while let Some(message) = get(&publisher.channel(), &t.work_queue()).await {
            assert_eq!(message.delivery.routing_key.as_str(), "unit-test");
            let id = message_id(&message.delivery.properties).unwrap();
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
            ids.insert(id);
            let content_type = message.delivery.properties.content_type().clone();
            let items = decode(
                &message.delivery.data,
                content_type.as_ref().map(|c| c.as_str()),
                &limits(),
            )
            .unwrap();
            for item in items {
                let Item::Request(request) = item else {
                    panic!("{item:?}")
                };
                assert_eq!(request.source.as_deref(), Some("unit-test"));
                let kind = request.kind.expect("kind");
                let _: mdti_worker::observable::ObservableKind = kind.parse().unwrap();
                values.push(request.value);
            }
        }
        assert_eq!(ids.len(), 2);
        assert_eq!(values, vec!["8.8.8.8", "1.1.1.1", "evil.com", "9.9.9.9"]);
        publisher.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn publish_run_counts_unconfirmed_batches_as_not_published() {
    let t = topology(Duration::from_secs(30));
    with_cleanup(&[&t], async {
        let publisher = Publisher::connect(&amqp_url(), t.clone()).await.unwrap();
        // No queue behind the input exchange: every message comes back unroutable.
        publisher
            .channel()
            .queue_delete(
                t.work_queue().as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
        let options = PublishOptions {
            batch_size: 1,
            progress: false,
            report_lines: false,
            ..PublishOptions::default()
        };
        let inputs: Vec<Box<dyn std::io::BufRead + Send>> =
            vec![Box::new("8.8.8.8\n1.1.1.1\n9.9.9.9\n".as_bytes())];
        let summary = publish::run(options, &publisher, inputs, vec!["-".into()])
            .await
            .unwrap();
        assert_eq!(summary.published, 0);
        assert_eq!(summary.messages, 0);
        assert_eq!(summary.not_published, 3);
        assert_eq!(summary.read, 3);
        assert!(!summary.errors.is_empty());
        assert!(
            summary.errors[0].contains("unroutable"),
            "{:?}",
            summary.errors
        );
        assert_eq!(summary.exit_code(), 1);
        publisher.close().await.unwrap();
    })
    .await;
}

/// lapin keeps 32 frames of buffer each way per connection: the worker proposes small frames
/// (the broker's default would be 8 MiB a connection), and a URL's own `frame_max` wins.
#[tokio::test]
async fn connections_propose_small_frames_unless_the_url_says_otherwise() {
    let connection = mdti_worker::queue::connect(&amqp_url()).await.unwrap();
    assert_eq!(
        connection.configuration().frame_max(),
        mdti_worker::queue::FRAME_MAX
    );
    let _ = connection.close(200, "done".into()).await;

    let separator = if amqp_url().contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}frame_max=65536", amqp_url());
    let connection = mdti_worker::queue::connect(&url).await.unwrap();
    assert_eq!(connection.configuration().frame_max(), 65536);
    let _ = connection.close(200, "done".into()).await;
}
