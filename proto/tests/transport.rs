//! The generated client and server work over a Unix socket with tonic's transport (as agentctl
//! reaches the daemon), the server stream delivers, and FILE_DESCRIPTOR_SET serves reflection
//! (v1 and v1alpha): what grpcurl needs to list, describe and call the API.

use std::pin::Pin;

use node_agent_proto::v1::node_agent_client::NodeAgentClient;
use node_agent_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use node_agent_proto::v1::*;
use node_agent_proto::{API_MINOR, API_VERSION, FILE_DESCRIPTOR_SET, SERVICE_NAME};
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Answers GetStatus and WatchDrift; everything else is UNIMPLEMENTED.
struct Stub;

type Reply<T> = Result<Response<T>, Status>;

fn unimplemented<T>() -> Reply<T> {
    Err(Status::unimplemented("stub"))
}

fn drift_event(transition: DriftTransition, key: &str) -> DriftEvent {
    DriftEvent {
        transition: transition.into(),
        item: Some(Item {
            class: Class::Sysctl.into(),
            key: key.into(),
            expected: "10".into(),
            actual: Some("60".into()),
            status: ItemStatus::Drift.into(),
            ..Item::default()
        }),
        time: Some(prost_types::Timestamp {
            seconds: 1_795_646_228,
            nanos: 0,
        }),
        ..DriftEvent::default()
    }
}

#[tonic::async_trait]
impl NodeAgent for Stub {
    async fn get_status(&self, _: Request<GetStatusRequest>) -> Reply<GetStatusResponse> {
        Ok(Response::new(GetStatusResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
            api_minor: API_MINOR,
            mode: Mode::Observe.into(),
            ..GetStatusResponse::default()
        }))
    }

    async fn verify(&self, _: Request<VerifyRequest>) -> Reply<VerifyResponse> {
        unimplemented()
    }

    type WatchDriftStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<DriftEvent, Status>> + Send>>;

    async fn watch_drift(&self, _: Request<WatchDriftRequest>) -> Reply<Self::WatchDriftStream> {
        let events = vec![
            Ok(drift_event(DriftTransition::New, "vm.swappiness")),
            Ok(drift_event(DriftTransition::Resolved, "vm.swappiness")),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }

    async fn plan(&self, _: Request<PlanRequest>) -> Reply<PlanResponse> {
        unimplemented()
    }

    async fn apply(&self, _: Request<ApplyRequest>) -> Reply<ApplyResponse> {
        unimplemented()
    }

    async fn rollback(&self, _: Request<RollbackRequest>) -> Reply<RollbackResponse> {
        unimplemented()
    }

    async fn list_units(&self, _: Request<ListUnitsRequest>) -> Reply<ListUnitsResponse> {
        unimplemented()
    }

    async fn control_unit(&self, _: Request<ControlUnitRequest>) -> Reply<ControlUnitResponse> {
        unimplemented()
    }

    async fn platform_stop(&self, _: Request<PlatformStopRequest>) -> Reply<PlatformStopResponse> {
        unimplemented()
    }

    async fn platform_start(
        &self,
        _: Request<PlatformStartRequest>,
    ) -> Reply<PlatformStartResponse> {
        unimplemented()
    }

    async fn get_health(&self, _: Request<GetHealthRequest>) -> Reply<GetHealthResponse> {
        unimplemented()
    }

    async fn enforce_pause(&self, _: Request<EnforcePauseRequest>) -> Reply<EnforcePauseResponse> {
        unimplemented()
    }

    async fn enforce_resume(
        &self,
        _: Request<EnforceResumeRequest>,
    ) -> Reply<EnforceResumeResponse> {
        unimplemented()
    }
}

/// Serves the stub and reflection on a Unix socket; returns a channel to it.
async fn serve(dir: &tempfile::TempDir) -> Channel {
    let path = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set registers with reflection v1");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the descriptor set registers with reflection v1alpha");
    tokio::spawn(
        Server::builder()
            .add_service(NodeAgentServer::new(Stub))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    Endpoint::from_shared(format!("unix://{}", path.display()))
        .unwrap()
        .connect()
        .await
        .expect("connects over the Unix socket")
}

#[tokio::test]
async fn client_and_server_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = NodeAgentClient::new(serve(&dir).await);

    let status = client
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.api_version, "v1");
    assert_eq!(status.api_minor, API_MINOR);
    assert_eq!(status.mode(), Mode::Observe);

    let events: Vec<DriftEvent> = client
        .watch_drift(WatchDriftRequest {
            initial_state: true,
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let transitions: Vec<DriftTransition> = events.iter().map(DriftEvent::transition).collect();
    assert_eq!(
        transitions,
        [DriftTransition::New, DriftTransition::Resolved]
    );
    assert_eq!(events[0].item.as_ref().unwrap().key, "vm.swappiness");

    let err = client.apply(ApplyRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

async fn reflect(
    client: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response: ServerReflectionResponse = responses.next().await.unwrap().unwrap();
    response.message_response.unwrap()
}

#[tokio::test]
async fn reflection_lists_and_describes_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut client = ServerReflectionClient::new(serve(&dir).await);

    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(services.contains(&SERVICE_NAME), "{services:?}");

    // What `grpcurl describe nodeagent.v1.NodeAgent` asks, then the imports it resolves.
    for request in [
        MessageRequest::FileContainingSymbol(SERVICE_NAME.into()),
        MessageRequest::FileContainingSymbol("nodeagent.v1.DriftEvent".into()),
        MessageRequest::FileByFilename("google/protobuf/timestamp.proto".into()),
    ] {
        let MessageResponse::FileDescriptorResponse(files) =
            reflect(&mut client, request.clone()).await
        else {
            panic!("{request:?}: no file descriptor");
        };
        let names: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|b| {
                prost_types::FileDescriptorProto::decode(b.as_slice())
                    .unwrap()
                    .name()
                    .to_owned()
            })
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n == "nodeagent/v1/agent.proto" || n == "google/protobuf/timestamp.proto"),
            "{request:?}: {names:?}"
        );
    }
}
