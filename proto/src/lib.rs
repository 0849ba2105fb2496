//! The gRPC API of node-agentd, package `nodeagent.v1` (nodeagent/v1/agent.proto, described in
//! docs/API.md): the generated messages, the `NodeAgent` client (with transport: Unix sockets
//! and mutual TLS) and server, and the encoded descriptor set for server reflection.
//!
//! Generated code only: the conversion between these messages and the agent's domain types
//! lives with the daemon.

/// The `nodeagent` protobuf packages.
pub mod nodeagent {
    /// Package `nodeagent.v1`.
    pub mod v1 {
        tonic::include_proto!("nodeagent.v1");
    }

    /// The `nodeagent.fleet` packages: the collector's API.
    pub mod fleet {
        /// Package `nodeagent.fleet.v1` (nodeagent/fleet/v1/fleet.proto): the `Fleet` service
        /// of node-collector.
        pub mod v1 {
            tonic::include_proto!("nodeagent.fleet.v1");
        }
    }
}

pub use nodeagent::v1;

/// The API's major version, as GetStatus reports it: the package is `nodeagent.v1`.
pub const API_VERSION: &str = "v1";

/// The API's minor version: bumped by every compatible addition to v1 (a field, an enum value,
/// a message or an RPC). It is the `api-minor` line of agent.proto; GetStatus reports it.
pub const API_MINOR: u32 = 0;

/// The fully qualified name of the service, as reflection and grpc.health.v1 name it.
pub const SERVICE_NAME: &str = v1::node_agent_server::SERVICE_NAME;

/// The encoded `google.protobuf.FileDescriptorSet` of the API, with the well-known types it
/// imports: register it with tonic-reflection
/// (`Builder::configure().register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)`, for both
/// `build_v1()` and `build_v1alpha()`), together with `tonic_health::pb::FILE_DESCRIPTOR_SET`,
/// without which grpcurl cannot resolve `grpc.health.v1.Health` through reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nodeagent_descriptor.bin"));

/// The collector's Fleet API, package `nodeagent.fleet.v1` (docs/API.md, "Fleet API").
pub use nodeagent::fleet::v1 as fleet_v1;

/// The fully qualified name of the collector's service.
pub const FLEET_SERVICE_NAME: &str = fleet_v1::fleet_server::SERVICE_NAME;

/// The encoded `google.protobuf.FileDescriptorSet` of the Fleet API (with the well-known types
/// it imports), for the collector's server reflection. Separate from `FILE_DESCRIPTOR_SET`, so
/// the agent advertises nodeagent.v1 only.
pub const FLEET_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fleet_descriptor.bin"));
