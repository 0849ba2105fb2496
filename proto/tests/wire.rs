//! The wire format evolves compatibly: a reader skips fields it does not know (a newer agent
//! talking to an older collector), keeps enum values it does not know, and a message missing
//! newer fields decodes to their defaults (an older agent talking to a newer collector).

use node_agent_proto::v1::{
    Class, DriftEvent, DriftTransition, GetStatusResponse, InterruptedApply, Item, ItemStatus,
    Mode, ProfileRef, Report, Summary, Target, Value, target, value,
};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};

fn item() -> Item {
    Item {
        class: Class::Sysctl.into(),
        key: "vm.swappiness".into(),
        expected: "10".into(),
        actual: Some("60".into()),
        path: Some("/proc/sys/vm/swappiness".into()),
        status: ItemStatus::Drift.into(),
        reason: None,
    }
}

fn report() -> Report {
    Report {
        schema_version: 1,
        profile: Some(ProfileRef {
            name: "trading-latency".into(),
            path: "/etc/node-agent/profiles/trading-latency.toml".into(),
        }),
        host: "tr-fra-07".into(),
        items: vec![item()],
        summary: Some(Summary {
            drift: 1,
            ..Summary::default()
        }),
        interrupted_apply: Some(InterruptedApply {
            profile: "trading-latency".into(),
            started: Some(prost_types::Timestamp {
                seconds: 1_795_646_228,
                nanos: 0,
            }),
            user: "root".into(),
            steps_done: 3,
            steps_total: 7,
        }),
    }
}

/// Fields a later v1 might add, one of each wire type, with numbers this v1 does not use.
fn future_fields(buf: &mut Vec<u8>) {
    encode_key(900, WireType::Varint, buf);
    encode_varint(42, buf);
    encode_key(901, WireType::LengthDelimited, buf);
    encode_varint(6, buf);
    buf.extend_from_slice(b"future");
    encode_key(902, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&7u64.to_le_bytes());
    encode_key(903, WireType::ThirtyTwoBit, buf);
    buf.extend_from_slice(&7u32.to_le_bytes());
}

#[test]
fn round_trips() {
    let r = report();
    let back = Report::decode(r.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.items[0].status(), ItemStatus::Drift);
    assert_eq!(back.items[0].class(), Class::Sysctl);
}

#[test]
fn unknown_fields_are_skipped_at_every_level() {
    // A nested item with a field from the future...
    let mut item_bytes = item().encode_to_vec();
    future_fields(&mut item_bytes);
    // ...inside a report with the items cleared and re-added by hand, plus top-level future
    // fields before and after it.
    let mut r = report();
    r.items.clear();
    let mut buf = Vec::new();
    future_fields(&mut buf);
    buf.extend(r.encode_to_vec());
    encode_key(4, WireType::LengthDelimited, &mut buf);
    encode_varint(item_bytes.len() as u64, &mut buf);
    buf.extend(&item_bytes);
    future_fields(&mut buf);

    let back = Report::decode(buf.as_slice()).expect("a newer report decodes");
    assert_eq!(back, report());
}

#[test]
fn unknown_enum_values_survive_and_read_as_unspecified() {
    let mut i = item();
    i.status = 99; // an ItemStatus a later v1 adds
    i.class = 42;
    let back = Item::decode(i.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.status, 99, "the raw value is kept");
    assert_eq!(back.status(), ItemStatus::Unspecified);
    assert_eq!(back.class(), Class::Unspecified);
    // Re-encoding forwards it unchanged (a collector relaying events).
    assert_eq!(back.encode_to_vec(), i.encode_to_vec());
}

#[test]
fn missing_fields_read_as_defaults() {
    // What an agent that knows only the first fields of GetStatusResponse sends.
    let old = GetStatusResponse {
        agent_version: "0.1.0".into(),
        api_version: "v1".into(),
        ..GetStatusResponse::default()
    };
    let mut buf = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(5, &mut buf);
    buf.extend_from_slice(b"0.1.0");
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(2, &mut buf);
    buf.extend_from_slice(b"v1");
    let back = GetStatusResponse::decode(buf.as_slice()).unwrap();
    assert_eq!(back, old);
    assert_eq!(back.mode(), Mode::Unspecified);
    assert_eq!(back.api_minor, 0);
    assert!(back.last_verify.is_none() && back.summary.is_none());
}

#[test]
fn oneofs_round_trip() {
    let event = DriftEvent {
        transition: DriftTransition::Changed.into(),
        item: Some(item()),
        time: Some(prost_types::Timestamp {
            seconds: 1_795_646_228,
            nanos: 5,
        }),
        previous_status: ItemStatus::Drift.into(),
        previous_actual: Some("30".into()),
    };
    assert_eq!(
        DriftEvent::decode(event.encode_to_vec().as_slice()).unwrap(),
        event
    );
    let swap = Target {
        kind: Some(target::Kind::Swap("/swapfile".into())),
        description: "swap /swapfile".into(),
    };
    assert_eq!(
        Target::decode(swap.encode_to_vec().as_slice()).unwrap(),
        swap
    );
    let options = Value {
        state: Some(value::State::MountOptions(value::MountOptions {
            options: vec!["noatime".into(), "nodiratime".into()],
        })),
        description: "noatime,nodiratime".into(),
    };
    assert_eq!(
        Value::decode(options.encode_to_vec().as_slice()).unwrap(),
        options
    );
    // An empty-message member of a oneof is still distinguishable from "not set".
    let absent = Value {
        state: Some(value::State::Absent(value::Absent {})),
        description: "absent".into(),
    };
    let back = Value::decode(absent.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.state, Some(value::State::Absent(value::Absent {})));
}
