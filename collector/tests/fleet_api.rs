//! The Fleet API's descriptor: its own package and descriptor set (the agent's nodeagent.v1
//! set does not mention it), exactly the agreed RPCs, enums starting with UNSPECIFIED, and
//! every message, field, enum, value and RPC documented in fleet.proto.

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

fn fleet_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(node_agent_proto::FLEET_FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .into_iter()
        .find(|f| f.name() == "nodeagent/fleet/v1/fleet.proto")
        .expect("fleet.proto in the fleet descriptor set")
}

#[test]
fn own_package_and_the_agreed_rpcs() {
    let f = fleet_file();
    assert_eq!(f.package(), "nodeagent.fleet.v1");
    let methods: Vec<&str> = f.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(f.service.len(), 1);
    assert_eq!(f.service[0].name(), "Fleet");
    assert_eq!(methods, ["FleetStatus", "HostHistory"]);
    assert_eq!(
        node_agent_proto::FLEET_SERVICE_NAME,
        "nodeagent.fleet.v1.Fleet"
    );
    // The agent's set (reflection of node-agentd) is nodeagent.v1 only.
    let agent = FileDescriptorSet::decode(node_agent_proto::FILE_DESCRIPTOR_SET).unwrap();
    assert!(
        agent
            .file
            .iter()
            .all(|f| !f.package().starts_with("nodeagent.fleet"))
    );
}

#[test]
fn enums_start_with_unspecified() {
    for e in &fleet_file().enum_type {
        assert!(
            e.value[0].name().ends_with("_UNSPECIFIED") && e.value[0].number() == 0,
            "{}",
            e.name()
        );
    }
}

#[test]
fn every_element_is_documented() {
    let f = fleet_file();
    let info = f.source_code_info.as_ref().expect("source info");
    let documented: std::collections::HashSet<Vec<i32>> = info
        .location
        .iter()
        .filter(|l| !l.leading_comments().trim().is_empty())
        .map(|l| l.path.clone())
        .collect();
    let mut missing = Vec::new();
    // FileDescriptorProto: message_type = 4, enum_type = 5, service = 6; DescriptorProto:
    // field = 2; EnumDescriptorProto: value = 2; ServiceDescriptorProto: method = 2.
    for (i, m) in f.message_type.iter().enumerate() {
        let p = vec![4, i as i32];
        if !documented.contains(&p) {
            missing.push(m.name().to_owned());
        }
        for (j, field) in m.field.iter().enumerate() {
            if !documented.contains(&vec![4, i as i32, 2, j as i32]) {
                missing.push(format!("{}.{}", m.name(), field.name()));
            }
        }
    }
    for (i, e) in f.enum_type.iter().enumerate() {
        if !documented.contains(&vec![5, i as i32]) {
            missing.push(e.name().to_owned());
        }
        for (j, v) in e.value.iter().enumerate() {
            if !documented.contains(&vec![5, i as i32, 2, j as i32]) {
                missing.push(v.name().to_owned());
            }
        }
    }
    for (i, s) in f.service.iter().enumerate() {
        if !documented.contains(&vec![6, i as i32]) {
            missing.push(s.name().to_owned());
        }
        for (j, m) in s.method.iter().enumerate() {
            if !documented.contains(&vec![6, i as i32, 2, j as i32]) {
                missing.push(m.name().to_owned());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented in fleet.proto: {missing:?}"
    );
}
