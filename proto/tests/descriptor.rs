//! The descriptor set exported for reflection describes the API the lead agreed on, every
//! element is documented, and v1 only grows: tests/api-v1.txt records the API surface, and a
//! change to it other than an addition (tagged with a new API minor) fails here.

use std::collections::{BTreeMap, BTreeSet};

use node_agent_proto::{API_MINOR, API_VERSION, FILE_DESCRIPTOR_SET, SERVICE_NAME};
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

const PROTO_FILE: &str = "nodeagent/v1/agent.proto";
const PROTO_SOURCE: &str = include_str!("../nodeagent/v1/agent.proto");
const SURFACE: &str = include_str!("api-v1.txt");

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn agent_file(set: &FileDescriptorSet) -> &FileDescriptorProto {
    set.file
        .iter()
        .find(|f| f.name() == PROTO_FILE)
        .expect("the set holds nodeagent/v1/agent.proto")
}

#[test]
fn service_has_exactly_the_agreed_methods() {
    let set = descriptor_set();
    let file = agent_file(&set);
    assert_eq!(file.package(), "nodeagent.v1");
    assert_eq!(file.syntax(), "proto3");
    assert_eq!(format!("nodeagent.{API_VERSION}.NodeAgent"), SERVICE_NAME);

    // Reflection clients resolve the imported well-known types from the same set.
    assert!(
        file.dependency
            .iter()
            .any(|d| d == "google/protobuf/timestamp.proto")
    );
    assert!(
        set.file
            .iter()
            .any(|f| f.name() == "google/protobuf/timestamp.proto")
    );

    let services: Vec<&str> = file.service.iter().map(|s| s.name()).collect();
    assert_eq!(services, ["NodeAgent"]);
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "GetStatus",
            "Verify",
            "WatchDrift",
            "Plan",
            "Apply",
            "Rollback",
            "ListUnits",
            "ControlUnit",
            "PlatformStop",
            "PlatformStart",
            "GetHealth",
            "EnforcePause",
            "EnforceResume",
        ]
    );
    for m in &file.service[0].method {
        let name = m.name();
        assert_eq!(m.input_type(), format!(".nodeagent.v1.{name}Request"));
        assert!(!m.client_streaming(), "{name} streams requests");
        if name == "WatchDrift" {
            assert_eq!(m.output_type(), ".nodeagent.v1.DriftEvent");
            assert!(m.server_streaming());
        } else {
            assert_eq!(m.output_type(), format!(".nodeagent.v1.{name}Response"));
            assert!(!m.server_streaming(), "{name} streams responses");
        }
    }
}

fn all_enums<'a>(
    prefix: &str,
    messages: &'a [DescriptorProto],
    enums: &'a [EnumDescriptorProto],
    out: &mut Vec<(String, &'a EnumDescriptorProto)>,
) {
    out.extend(enums.iter().map(|e| (format!("{prefix}{}", e.name()), e)));
    for m in messages {
        let inner = format!("{prefix}{}.", m.name());
        all_enums(&inner, &m.nested_type, &m.enum_type, out);
    }
}

/// `CLASS_UNSPECIFIED` from `Class`, `ITEM_STATUS_UNSPECIFIED` from `ItemStatus`.
fn screaming(name: &str) -> String {
    let mut s = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
    }
    s
}

#[test]
fn enums_start_with_unspecified_and_prefix_their_values() {
    let set = descriptor_set();
    let file = agent_file(&set);
    let mut enums = Vec::new();
    all_enums("", &file.message_type, &file.enum_type, &mut enums);
    assert!(enums.len() >= 7, "{enums:?}");
    for (name, e) in enums {
        let prefix = screaming(e.name());
        let first = &e.value[0];
        assert_eq!(first.number(), 0, "{name}");
        assert_eq!(first.name(), format!("{prefix}_UNSPECIFIED"), "{name}");
        for v in &e.value {
            assert!(
                v.name().starts_with(&format!("{prefix}_")),
                "{name}: {}",
                v.name()
            );
        }
    }
}

/// Every message, field, oneof, enum, enum value, service and method has a leading comment.
#[test]
fn every_element_is_documented() {
    let set = descriptor_set();
    let file = agent_file(&set);
    let info = file
        .source_code_info
        .as_ref()
        .expect("protox keeps source info");
    let documented: BTreeSet<&[i32]> = info
        .location
        .iter()
        .filter(|l| !l.leading_comments().trim().is_empty())
        .map(|l| l.path.as_slice())
        .collect();
    let mut missing = Vec::new();
    let mut check = |path: Vec<i32>, what: String| {
        if !documented.contains(path.as_slice()) {
            missing.push(what);
        }
    };

    // Field numbers of descriptor.proto: FileDescriptorProto.message_type 4, enum_type 5,
    // service 6; DescriptorProto.field 2, nested_type 3, enum_type 4, oneof_decl 8;
    // EnumDescriptorProto.value 2; ServiceDescriptorProto.method 2.
    fn message(
        path: Vec<i32>,
        m: &DescriptorProto,
        check: &mut dyn FnMut(Vec<i32>, String),
        name: String,
    ) {
        check(path.clone(), format!("message {name}"));
        for (i, f) in m.field.iter().enumerate() {
            check(
                [path.as_slice(), &[2, i as i32]].concat(),
                format!("field {name}.{}", f.name()),
            );
        }
        for (i, o) in m.oneof_decl.iter().enumerate() {
            // proto3 `optional` makes a synthetic oneof named after the field: not written.
            if !o.name().starts_with('_') {
                check(
                    [path.as_slice(), &[8, i as i32]].concat(),
                    format!("oneof {name}.{}", o.name()),
                );
            }
        }
        for (i, n) in m.nested_type.iter().enumerate() {
            message(
                [path.as_slice(), &[3, i as i32]].concat(),
                n,
                check,
                format!("{name}.{}", n.name()),
            );
        }
        for (i, e) in m.enum_type.iter().enumerate() {
            enumeration(
                [path.as_slice(), &[4, i as i32]].concat(),
                e,
                check,
                format!("{name}.{}", e.name()),
            );
        }
    }
    fn enumeration(
        path: Vec<i32>,
        e: &EnumDescriptorProto,
        check: &mut dyn FnMut(Vec<i32>, String),
        name: String,
    ) {
        check(path.clone(), format!("enum {name}"));
        for (i, v) in e.value.iter().enumerate() {
            check(
                [path.as_slice(), &[2, i as i32]].concat(),
                format!("value {}", v.name()),
            );
        }
    }

    for (i, m) in file.message_type.iter().enumerate() {
        message(vec![4, i as i32], m, &mut check, m.name().to_owned());
    }
    for (i, e) in file.enum_type.iter().enumerate() {
        enumeration(vec![5, i as i32], e, &mut check, e.name().to_owned());
    }
    for (i, s) in file.service.iter().enumerate() {
        check(vec![6, i as i32], format!("service {}", s.name()));
        for (j, m) in s.method.iter().enumerate() {
            check(vec![6, i as i32, 2, j as i32], format!("rpc {}", m.name()));
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:#?}");
}

fn short(type_name: &str) -> &str {
    type_name.trim_start_matches(".nodeagent.v1.")
}

fn message_surface(prefix: &str, m: &DescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{prefix}{}", m.name());
    out.insert(format!("message {name}"));
    for f in &m.field {
        let label = match (f.label(), f.proto3_optional()) {
            (Label::Repeated, _) => "repeated",
            (_, true) => "optional",
            _ => "singular",
        };
        let ty = match f.r#type() {
            Type::Message | Type::Enum => short(f.type_name()).to_owned(),
            t => t.as_str_name().trim_start_matches("TYPE_").to_lowercase(),
        };
        let oneof = match f.oneof_index {
            Some(i) if !f.proto3_optional() => {
                format!(" in oneof {}", m.oneof_decl[i as usize].name())
            }
            _ => String::new(),
        };
        out.insert(format!(
            "field {name}.{} = {} {label} {ty}{oneof}",
            f.name(),
            f.number()
        ));
    }
    for n in &m.nested_type {
        message_surface(&format!("{name}."), n, out);
    }
    for e in &m.enum_type {
        enum_surface(&format!("{name}."), e, out);
    }
}

fn enum_surface(prefix: &str, e: &EnumDescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{prefix}{}", e.name());
    out.insert(format!("enum {name}"));
    for v in &e.value {
        out.insert(format!("value {name}.{} = {}", v.name(), v.number()));
    }
}

/// One line per message, field (number, label, type, oneof), enum, enum value and RPC.
fn surface(file: &FileDescriptorProto) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in &file.message_type {
        message_surface("", m, &mut out);
    }
    for e in &file.enum_type {
        enum_surface("", e, &mut out);
    }
    for s in &file.service {
        for m in &s.method {
            out.insert(format!(
                "rpc {}.{}({}) returns ({}{})",
                s.name(),
                m.name(),
                short(m.input_type()),
                if m.server_streaming() { "stream " } else { "" },
                short(m.output_type())
            ));
        }
    }
    out
}

/// The `api-minor: N` line of the proto header.
fn proto_api_minor() -> u32 {
    PROTO_SOURCE
        .lines()
        .find_map(|l| l.strip_prefix("// api-minor: "))
        .expect("agent.proto has an `// api-minor: N` line")
        .trim()
        .parse()
        .expect("api-minor is a number")
}

#[test]
fn v1_only_grows() {
    // `MINOR LINE`: the minor version that added the line.
    let recorded: BTreeMap<&str, u32> = SURFACE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (minor, rest) = l.split_once(' ').expect("`MINOR LINE`");
            (rest, minor.parse().expect("the minor is a number"))
        })
        .collect();
    let set = descriptor_set();
    let current = surface(agent_file(&set));

    let changed: Vec<&&str> = recorded.keys().filter(|l| !current.contains(**l)).collect();
    assert!(
        changed.is_empty(),
        "incompatible change to nodeagent.v1: these elements were removed, renumbered, renamed \
         or retyped (add new fields instead; reserve removed ones): {changed:#?}"
    );
    let next = API_MINOR + 1;
    let added: Vec<String> = current
        .iter()
        .filter(|l| !recorded.contains_key(l.as_str()))
        .map(|l| format!("{next} {l}"))
        .collect();
    assert!(
        added.is_empty(),
        "nodeagent.v1 grew: append these lines to proto/tests/api-v1.txt and bump API_MINOR \
         (src/lib.rs) and `api-minor` (agent.proto) to {next}:\n{}",
        added.join("\n")
    );

    let newest = recorded.values().copied().max().unwrap_or(0);
    assert_eq!(
        newest, API_MINOR,
        "API_MINOR must be the newest minor in api-v1.txt"
    );
    assert_eq!(proto_api_minor(), API_MINOR, "agent.proto's api-minor");
}
