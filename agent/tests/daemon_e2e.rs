//! End to end: the real `node-agentd` binary as a child process, with its settings, socket,
//! state directory, profiles and a test-fleet PKI in a temporary directory, called over its
//! Unix socket and over mutual TLS on 127.0.0.1 with the generated client, and through
//! `agentctl`.
//!
//! The always-run tests only read the kernel: their profiles name sysctls anyone may read and
//! no other test changes (kernel.threads-max, kernel.pid_max, fs.inotify.max_user_instances,
//! vm.max_map_count), the daemon runs in observe mode (or in enforce mode with targets the
//! profile has nothing of), and the one Apply they make is limited to a class whose plan is
//! empty. They run as whoever runs the tests (root in CI; a user on a laptop).
//!
//! The real-kernel tests (`NODE_AGENT_PRIVILEGED_TESTS=1`, root) change net.core.somaxconn under
//! the tier lock and the tier's guard (support/real.rs), which snapshots it and the agent's
//! sysctl.d file and restores both, also on panic; the daemon is stopped before the guard
//! restores, so it cannot write behind it.

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/real.rs"]
mod real;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use daemon_support::{
    Client, OBSERVER_CN, OPERATOR_CN, Opts, Setup, describe, next_event, now_secs, poll,
    read_sysctl, sha256_hex, status_field, write_sysctl,
};
use nix::sys::signal::Signal;
use node_agent::host::HostRoot;
use node_agent::profile::{self, SearchPath};
use node_agent::verify::Report;
use node_agent_proto::v1 as pb;
use tonic::Code;

/// Bound on waiting for a drift event or a reload: several 1 s verify intervals.
const EVENT_TIMEOUT: Duration = Duration::from_secs(8);
const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

// ---------------------------------------------------------------------------------------------
// Profiles

/// Passes on any host without writing: bounds the kernel defaults meet (kernel.pid_max's
/// boot-time file, 50-pid-max.conf, sets a value above the floor too).
fn compliant_profile(name: &str) -> String {
    format!(
        "[profile]\nname = \"{name}\"\ndescription = \"e2e: compliant\"\n\n[sysctl]\n\
         \"kernel.threads-max\" = {{ min = 1 }}\n\"kernel.pid_max\" = {{ min = 301 }}\n"
    )
}

const DRIFT_KEY: &str = "fs.inotify.max_user_instances";

/// One drifted item (DRIFT_KEY expects its current value + 1); observe mode never fixes it.
fn drifted_profile(name: &str) -> (String, String) {
    let wanted = (read_sysctl(DRIFT_KEY).parse::<u64>().expect("a number") + 1).to_string();
    (
        format!(
            "[profile]\nname = \"{name}\"\n\n[sysctl]\n\"kernel.threads-max\" = {{ min = 1 }}\n\
             \"{DRIFT_KEY}\" = {wanted}\n"
        ),
        wanted,
    )
}

const ABSENT_KEY: &str = "net.core.e2e_no_such_knob";

/// Every status a read-only sysctl profile can give here: pass (a bound), drift (DRIFT_KEY),
/// unsupported (ABSENT_KEY), not-persistent or pass (an exact current value), and the
/// clocksource as it is.
fn mixed_profile(name: &str) -> String {
    let (_, wanted) = drifted_profile(name);
    let clocksource = std::fs::read_to_string(CLOCKSOURCE).expect("read the clocksource");
    format!(
        "[profile]\nname = \"{name}\"\n\n[sysctl]\n\"kernel.threads-max\" = {{ min = 1 }}\n\
         \"vm.max_map_count\" = {}\n\"{DRIFT_KEY}\" = {wanted}\n\"{ABSENT_KEY}\" = 1\n\n\
         [clocksource]\ncurrent = \"{}\"\n",
        read_sysctl("vm.max_map_count"),
        clocksource.trim()
    )
}

fn local_verify(path: &Path) -> Report {
    let profile = profile::load(&path.to_string_lossy(), &SearchPath::new(Vec::new()))
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    node_agent::tuning::verify(&HostRoot::new("/"), &profile)
}

fn statuses_of_local(r: &Report) -> BTreeMap<String, pb::ItemStatus> {
    r.items
        .iter()
        .map(|i| (i.key.clone(), pb::ItemStatus::from(i.status)))
        .collect()
}

fn statuses_of(r: &pb::Report) -> BTreeMap<String, pb::ItemStatus> {
    r.items
        .iter()
        .map(|i| {
            (
                i.key.clone(),
                pb::ItemStatus::try_from(i.status).unwrap_or(pb::ItemStatus::Unspecified),
            )
        })
        .collect()
}

fn profile_name(s: &pb::GetStatusResponse) -> &str {
    s.profile.as_ref().map_or("", |p| p.name.as_str())
}

async fn status(c: &mut Client) -> pb::GetStatusResponse {
    c.get_status(pb::GetStatusRequest {})
        .await
        .unwrap_or_else(|s| panic!("GetStatus: {s:?}"))
        .into_inner()
}

/// A failed call's code, or a panic naming what succeeded.
fn code_of<T: std::fmt::Debug>(
    what: &str,
    r: Result<tonic::Response<T>, tonic::Status>,
) -> tonic::Status {
    match r {
        Ok(ok) => panic!("{what}: expected an error, got {:?}", ok.into_inner()),
        Err(s) => s,
    }
}

#[allow(clippy::print_stderr)]
fn note(msg: &str) {
    eprintln!("daemon_e2e: {msg}");
}

// ---------------------------------------------------------------------------------------------
// 1. Roles over real mutual TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_observer_reads_operator_applies_and_bad_certificates_are_refused() {
    let setup = Setup::new();
    let profile = setup.profile("e2e-roles", &mixed_profile("e2e-roles"));
    let daemon = setup
        .start(&Opts {
            tcp: true,
            ..Opts::observe(&profile)
        })
        .await;

    let (ocert, okey) = setup.client_files(&setup.pki, OBSERVER_CN);
    let mut observer = daemon.tls(&ocert, &okey).await.expect("observer connects");
    let s = status(&mut observer).await;
    assert_eq!(profile_name(&s), "e2e-roles");

    // Verify reads afresh: the same items and statuses as a local verify of the same file.
    let report = observer
        .verify(pb::VerifyRequest {})
        .await
        .expect("observer Verify")
        .into_inner()
        .report
        .expect("a report");
    let local = local_verify(&profile);
    let remote = statuses_of(&report);
    assert_eq!(remote, statuses_of_local(&local), "daemon vs local verify");
    assert_eq!(remote.get(DRIFT_KEY), Some(&pb::ItemStatus::Drift));
    assert_eq!(remote.get(ABSENT_KEY), Some(&pb::ItemStatus::Unsupported));
    assert_eq!(
        remote.get("kernel.threads-max"),
        Some(&pb::ItemStatus::Pass)
    );
    assert_eq!(
        remote.get("clocksource.current"),
        Some(&pb::ItemStatus::Pass)
    );
    assert_eq!(
        report.profile.as_ref().map(|p| p.name.as_str()),
        Some("e2e-roles")
    );

    // The observer may stream drift: with initial_state, the current drift comes first.
    let mut stream = observer
        .watch_drift(pb::WatchDriftRequest {
            initial_state: true,
        })
        .await
        .expect("observer WatchDrift")
        .into_inner();
    let e = next_event(
        &mut stream,
        DRIFT_KEY,
        pb::DriftTransition::New,
        EVENT_TIMEOUT,
    )
    .await;
    assert_eq!(e.item.expect("item").status, pb::ItemStatus::Drift as i32);
    drop(stream);

    // ... and plan (read-only), but not apply (not even a dry run) or pause enforcement.
    observer
        .plan(pb::PlanRequest { classes: vec![] })
        .await
        .expect("observer Plan");
    for (what, r) in [
        (
            "observer Apply",
            observer
                .apply(pb::ApplyRequest {
                    dry_run: false,
                    classes: vec![pb::Class::Clocksource as i32],
                })
                .await
                .map(|_| ()),
        ),
        (
            "observer Apply dry_run",
            observer
                .apply(pb::ApplyRequest {
                    dry_run: true,
                    classes: vec![],
                })
                .await
                .map(|_| ()),
        ),
        (
            "observer Rollback",
            observer
                .rollback(pb::RollbackRequest { force: false })
                .await
                .map(|_| ()),
        ),
        (
            "observer EnforcePause",
            observer
                .enforce_pause(pb::EnforcePauseRequest {
                    duration_seconds: 60,
                    reason: String::new(),
                })
                .await
                .map(|_| ()),
        ),
    ] {
        let s = r.expect_err(what);
        assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
        assert_eq!(s.code() as i32, 7);
    }
    assert_eq!(status(&mut observer).await.enforcement_paused_until, None);

    // The operator applies. The class is limited to the clocksource, which the profile expects
    // as it is: the plan is empty and nothing on the host changes. (A full-scope apply of any
    // sysctl profile is never empty here: it writes /etc/sysctl.d/zz-node-agent.conf.)
    let (pcert, pkey) = setup.client_files(&setup.pki, OPERATOR_CN);
    let mut operator = daemon.tls(&pcert, &pkey).await.expect("operator connects");
    let applied = operator
        .apply(pb::ApplyRequest {
            dry_run: false,
            classes: vec![pb::Class::Clocksource as i32],
        })
        .await
        .expect("operator Apply")
        .into_inner();
    let plan = applied.plan.expect("a plan");
    assert!(plan.changes.is_empty(), "{:#?}", plan.changes);
    let after = applied.after.expect("the verify after the apply");
    assert_eq!(
        statuses_of(&after).get("clocksource.current"),
        Some(&pb::ItemStatus::Pass)
    );
    assert_eq!(
        std::fs::read_to_string(CLOCKSOURCE).unwrap().trim(),
        after
            .items
            .iter()
            .find(|i| i.key == "clocksource.current")
            .and_then(|i| i.actual.clone())
            .unwrap_or_default()
    );

    // An operator's pause over TLS is audited with the certificate's name.
    operator
        .enforce_pause(pb::EnforcePauseRequest {
            duration_seconds: 60,
            reason: "e2e".into(),
        })
        .await
        .expect("operator EnforcePause");
    let by = status(&mut observer).await.enforcement_paused_by;
    assert!(by.contains(OPERATOR_CN), "paused by {by:?}");
    assert!(
        operator
            .enforce_resume(pb::EnforceResumeRequest {})
            .await
            .expect("operator EnforceResume")
            .into_inner()
            .was_paused
    );
    let records = setup.audit_records();
    let by_operator: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["user"].as_str().is_some_and(|u| u.contains(OPERATOR_CN)))
        .filter_map(|r| {
            Some((
                r["fields"]["NODE_AGENT_ACTION"].as_str()?,
                r["message"].as_str()?,
            ))
        })
        .collect();
    // The Apply (nothing to change) is a record of its own, then the pause and the resume.
    assert_eq!(by_operator.len(), 3, "{records:#?}");
    assert_eq!(by_operator[0].0, "api-apply");
    assert_eq!(
        by_operator[0].1,
        "Apply (Classes([Clocksource])) through the API: 0 change(s), 0 refused"
    );
    let by_operator = &by_operator[1..];
    assert_eq!(by_operator[0].0, "enforce-pause");
    assert!(by_operator[0].1.ends_with(": e2e"), "{by_operator:?}");
    assert_eq!(by_operator[1].0, "enforce-resume");

    // No client certificate, a certificate of another CA, an expired one: refused below gRPC
    // (the connect, or under TLS 1.3 the first call, fails), never answered.
    let ca_cert = std::fs::read_to_string(&setup.pki.ca.cert).unwrap();
    let ca_key = std::fs::read_to_string(&setup.pki.ca.key).unwrap();
    let day = Duration::from_secs(86_400);
    let expired = node_agent::certs::issue_client(
        &ca_cert,
        &ca_key,
        OPERATOR_CN,
        SystemTime::now() - 3 * day,
        SystemTime::now() - day,
    )
    .expect("issue an expired certificate");
    let (xcert, xkey) = setup.client_files(&setup.other_pki, OPERATOR_CN);
    let foreign = (std::fs::read(xcert).unwrap(), std::fs::read(xkey).unwrap());
    for (what, identity, logged) in [
        ("no client certificate", None, "peer sent no certificates"),
        (
            "a certificate of another CA",
            Some((foreign.0.as_slice(), foreign.1.as_slice())),
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            "an expired certificate",
            Some((expired.cert_pem.as_bytes(), expired.key_pem.as_bytes())),
            "invalid peer certificate: certificate expired",
        ),
    ] {
        let err = daemon.tls_status_with(identity).await.expect_err(what);
        note(&format!("{what}: {err}"));
        // Under TLS 1.3 the client finishes its side first, so the refusal reaches it as a
        // transport error on the first call (UNKNOWN "transport error" or CANCELLED, as the
        // connection goes); it never gets an answer of the authorization layer.
        assert!(
            err.starts_with("connect:")
                || ["Unknown", "Cancelled", "Unavailable"]
                    .iter()
                    .any(|c| err.starts_with(&format!("call: {c}:"))),
            "{what}: {err}"
        );
        // The daemon refused it in the handshake, for this reason.
        daemon
            .wait_log(&format!("failed: {logged}"), 1, EVENT_TIMEOUT)
            .await;
    }
    // A valid certificate whose name no role lists gets past TLS but not the layer.
    let stranger = node_agent::certs::issue_client(
        &ca_cert,
        &ca_key,
        "stranger.e2e",
        SystemTime::now() - day,
        SystemTime::now() + day,
    )
    .unwrap();
    let err = daemon
        .tls_status_with(Some((
            stranger.cert_pem.as_bytes(),
            stranger.key_pem.as_bytes(),
        )))
        .await
        .expect_err("an unknown common name");
    assert!(err.starts_with("call: PermissionDenied"), "{err}");

    // It still serves.
    assert_eq!(profile_name(&status(&mut observer).await), "e2e-roles");
}

// ---------------------------------------------------------------------------------------------
// 2. Malformed and oversized requests

/// Sends the bytes as they are as the request body and reads the answer's bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes_put::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes_put::Buf as _;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// tonic's buffers implement the `bytes` traits; tonic re-exports none, prost does.
mod bytes_put {
    pub use prost::bytes::{Buf, BufMut};
}

async fn raw_call(socket: &Path, method: &'static str, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to the socket");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::from_static(method);
    match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
        Ok(r) => panic!(
            "{method}: a garbage body was answered: {:?}",
            r.into_inner()
        ),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_rejected_and_the_daemon_keeps_serving() {
    let setup = Setup::new();
    let profile = setup.profile("e2e-malformed", &compliant_profile("e2e-malformed"));
    let mut daemon = setup
        .start(&Opts {
            max_message_bytes: Some(64 * 1024),
            ..Opts::observe(&profile)
        })
        .await;
    // Root (or a member of the socket's group, which this user is) is operator on the socket.
    let mut c = daemon.unix().await;

    // A request over rpc.max_message_bytes: tonic rejects it by its length prefix, before
    // decoding, with OUT_OF_RANGE.
    let s = code_of(
        "EnforcePause with a 100 KiB reason",
        c.enforce_pause(pb::EnforcePauseRequest {
            duration_seconds: 60,
            reason: "x".repeat(100 * 1024),
        })
        .await,
    );
    note(&format!(
        "oversized request: {:?}: {}",
        s.code(),
        s.message()
    ));
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert!(s.message().contains("65536"), "{s:?}");
    // Just under the limit is fine (and is then resumed).
    c.enforce_pause(pb::EnforcePauseRequest {
        duration_seconds: 60,
        reason: "y".repeat(60 * 1024),
    })
    .await
    .expect("EnforcePause under the limit");
    assert!(
        c.enforce_resume(pb::EnforceResumeRequest {})
            .await
            .expect("EnforceResume")
            .into_inner()
            .was_paused
    );

    // Invalid enum values and arguments: INVALID_ARGUMENT naming the field.
    for (what, r, field) in [
        (
            "Apply classes [99]",
            c.apply(pb::ApplyRequest {
                dry_run: false,
                classes: vec![99],
            })
            .await
            .map(|_| ()),
            "classes[0]: unknown class 99",
        ),
        (
            "Apply dry_run classes [UNSPECIFIED]",
            c.apply(pb::ApplyRequest {
                dry_run: true,
                classes: vec![pb::Class::Unspecified as i32],
            })
            .await
            .map(|_| ()),
            "classes[0]: CLASS_UNSPECIFIED",
        ),
        (
            "Plan classes [SYSCTL, -1]",
            c.plan(pb::PlanRequest {
                classes: vec![pb::Class::Sysctl as i32, -1],
            })
            .await
            .map(|_| ()),
            "classes[1]: unknown class -1",
        ),
        (
            "EnforcePause duration_seconds 0",
            c.enforce_pause(pb::EnforcePauseRequest {
                duration_seconds: 0,
                reason: String::new(),
            })
            .await
            .map(|_| ()),
            "duration_seconds",
        ),
    ] {
        let s = r.expect_err(what);
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(s.message().contains(field), "{what}: {s:?}");
    }

    // A gRPC frame whose body is not the message: the length says 5 bytes of field 1, one
    // follows. tonic-prost maps a decode error to INTERNAL.
    let s = raw_call(
        &daemon.socket,
        "/nodeagent.v1.NodeAgent/GetStatus",
        vec![0x0a, 0x05, 0x01],
    )
    .await;
    note(&format!(
        "truncated protobuf body: {:?}: {}",
        s.code(),
        s.message()
    ));
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert!(s.message().contains("decode"), "{s:?}");
    // The same for an operator RPC: an unterminated varint as duration_seconds; not paused.
    let s = raw_call(
        &daemon.socket,
        "/nodeagent.v1.NodeAgent/EnforcePause",
        vec![0x08, 0xff],
    )
    .await;
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    // A method the service does not have.
    let s = raw_call(
        &daemon.socket,
        "/nodeagent.v1.NodeAgent/NoSuchMethod",
        vec![],
    )
    .await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");

    // Raw garbage instead of HTTP/2 on the socket: the daemon closes that connection.
    {
        use std::io::{Read as _, Write as _};
        let mut raw = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage \x01\x02")
            .unwrap();
        let mut buf = Vec::new();
        let read = raw.read_to_end(&mut buf);
        assert!(
            read.is_ok()
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the daemon did not close the connection: {read:?}"
        );
    }

    // Still serving, still not paused, still the same process.
    let mut c = daemon.unix().await;
    let s = status(&mut c).await;
    assert_eq!(profile_name(&s), "e2e-malformed");
    assert_eq!(s.enforcement_paused_until, None);
    assert!(daemon.alive(), "{}", daemon.log_text());
}

// ---------------------------------------------------------------------------------------------
// 3. SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_the_old_settings_when_broken_and_switches_profile_when_valid() {
    let setup = Setup::new();
    let one = setup.profile("e2e-one", &compliant_profile("e2e-one"));
    let (two_text, wanted) = drifted_profile("e2e-two");
    let two = setup.profile("e2e-two", &two_text);
    let opts = Opts {
        tcp: true,
        ..Opts::observe(&one)
    };
    let mut daemon = setup.start(&opts).await;
    let port = daemon.tcp().port();
    let mut c = daemon.unix().await;
    let before = status(&mut c).await;
    assert_eq!(profile_name(&before), "e2e-one");
    assert_eq!(
        before.profile_sha256,
        sha256_hex(&std::fs::read(&one).unwrap())
    );

    // A drift stream over mutual TLS, open across every reload below (the certificates are
    // reloaded with the settings).
    let (ocert, okey) = setup.client_files(&setup.pki, OBSERVER_CN);
    let mut observer = daemon.tls(&ocert, &okey).await.expect("observer connects");
    let mut stream = observer
        .watch_drift(pb::WatchDriftRequest {
            initial_state: false,
        })
        .await
        .expect("WatchDrift")
        .into_inner();

    // 1: settings that do not parse.
    setup.write_settings("[agent]\nmode = \"sometimes\"\n");
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log("SIGHUP: settings refused", 1, EVENT_TIMEOUT)
        .await;
    // 2: valid settings naming a profile that does not load.
    let broken = setup.profile(
        "e2e-broken",
        "[sysctl]\n\"kernel.threads-max\" = { min = \"x\" }\n",
    );
    setup.write_settings(&setup.settings_text(&Opts::observe(&broken), None));
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log("SIGHUP: settings refused", 2, EVENT_TIMEOUT)
        .await;
    let log = daemon.log_text();
    assert!(
        log.contains("sometimes"),
        "the refusal names the bad value:\n{log}"
    );
    assert!(
        log.contains("e2e-broken.toml"),
        "the refusal names the profile:\n{log}"
    );
    let kept = status(&mut c).await;
    assert_eq!(profile_name(&kept), "e2e-one");
    assert_eq!(kept.profile_sha256, before.profile_sha256);
    assert_eq!(kept.profile, before.profile);
    assert_eq!(kept.mode, before.mode);
    assert!(daemon.alive());

    // 3: valid settings with another profile (and the same listener).
    setup.write_settings(&setup.settings_text(
        &Opts {
            tcp: true,
            ..Opts::observe(&two)
        },
        Some(port),
    ));
    daemon.signal(Signal::SIGHUP);
    let now = poll("GetStatus shows e2e-two", EVENT_TIMEOUT, async || {
        let s = status(&mut c).await;
        (profile_name(&s) == "e2e-two").then_some(s)
    })
    .await;
    assert_eq!(now.profile_sha256, sha256_hex(two_text.as_bytes()));
    assert_ne!(now.profile_sha256, before.profile_sha256);
    assert_eq!(
        now.profile.as_ref().map(|p| p.path.as_str()),
        Some(two.to_str().unwrap())
    );
    daemon
        .wait_log("SIGHUP: settings reloaded", 1, EVENT_TIMEOUT)
        .await;

    // The stream opened before the reloads delivers the new profile's drift.
    let e = next_event(
        &mut stream,
        DRIFT_KEY,
        pb::DriftTransition::New,
        EVENT_TIMEOUT,
    )
    .await;
    let item = e.item.expect("item");
    assert_eq!(item.status, pb::ItemStatus::Drift as i32);
    assert_eq!(item.expected, wanted);
    assert_eq!(
        item.actual.as_deref(),
        Some(read_sysctl(DRIFT_KEY).as_str())
    );
    // And the observer's connection still works.
    assert_eq!(profile_name(&status(&mut observer).await), "e2e-two");
}

// ---------------------------------------------------------------------------------------------
// 4. GetStatus

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_status_reports_versions_profile_hash_mode_and_last_verify() {
    let setup = Setup::new();
    let text = compliant_profile("e2e-status");
    let profile = setup.profile("e2e-status", &text);
    let started = now_secs();
    let daemon = setup.start(&Opts::observe(&profile)).await;
    let mut c = daemon.unix().await;
    let s = status(&mut c).await;

    assert_eq!(s.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.api_version, "v1");
    assert_eq!(s.api_minor, node_agent_proto::API_MINOR);
    let p = s.profile.clone().expect("profile");
    assert_eq!(p.name, "e2e-status");
    assert_eq!(p.path, profile.to_str().unwrap());
    let hash = sha256_hex(text.as_bytes());
    assert_eq!(s.profile_sha256, hash);
    assert_eq!(hash.len(), 64);
    assert_eq!(s.mode, pb::Mode::Observe as i32);
    assert_eq!(
        s.host,
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    );
    assert_eq!(
        s.kernel_release,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    let last = s.last_verify.expect("a verify ran before serving");
    assert!(
        (started as i64 - 1..=now_secs() as i64).contains(&last.seconds),
        "last_verify {last:?}, started {started}"
    );
    let summary = s.summary.expect("summary");
    let local = local_verify(&profile);
    assert_eq!(summary.pass, local.summary.pass as u32);
    assert_eq!(summary.pass, 2);
    assert_eq!(
        summary.drift + summary.not_persistent + summary.error + summary.pending_reboot,
        0
    );
    assert_eq!(s.enforcement_paused_until, None);
    assert_eq!(s.interrupted_apply, None);

    // The mode as configured: enforce (over classes this profile has nothing of, so nothing
    // can be re-applied), after a reload.
    let mut daemon = daemon;
    setup.write_settings(&setup.settings_text(
        &Opts {
            mode: "enforce",
            enforce_targets: &["clocksource"],
            ..Opts::observe(&profile)
        },
        None,
    ));
    daemon.signal(Signal::SIGHUP);
    poll("GetStatus shows enforce", EVENT_TIMEOUT, async || {
        (status(&mut c).await.mode == pb::Mode::Enforce as i32).then_some(())
    })
    .await;
    assert!(daemon.alive());
}

// ---------------------------------------------------------------------------------------------
// 5. agentctl through the socket

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", describe(out)))
}

/// The exit code `tune verify` owes a JSON report: 1 with findings, else 0.
fn verdict_of(report: &serde_json::Value) -> i32 {
    let s = &report["summary"];
    let findings: u64 = ["drift", "pending-reboot", "not-persistent", "error"]
        .iter()
        .map(|k| {
            s[k].as_u64()
                .unwrap_or_else(|| panic!("summary.{k} in {report}"))
        })
        .sum();
    i32::from(findings > 0 || !report["interrupted_apply"].is_null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentctl_goes_through_the_socket_and_falls_back_when_the_daemon_is_stopped() {
    let setup = Setup::new();
    let one = setup.profile("e2e-ctl", &compliant_profile("e2e-ctl"));
    let (two_text, _) = drifted_profile("e2e-ctl-drift");
    let two = setup.profile("e2e-ctl-drift", &two_text);
    let mut daemon = setup.start(&Opts::observe(&one)).await;

    // tune verify without --profile: the daemon's verify, and the exit code its report says.
    let out = setup.agentctl(&["-o", "json", "tune", "verify"]);
    let report = json_of(&out);
    assert_eq!(report["profile"]["name"], "e2e-ctl", "{}", describe(&out));
    assert_eq!(
        out.status.code(),
        Some(verdict_of(&report)),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("not running"), "{}", describe(&out));

    let out = setup.agentctl(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("e2e-ctl"),
        "{}",
        describe(&out)
    );

    // Pause for 30 minutes, seen in the status, then resume; both audited.
    let out = setup.agentctl(&["enforce", "pause", "--for", "30m", "--reason", "CHG-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let paused_at = now_secs();
    let out = setup.agentctl(&["-o", "json", "daemon", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let st = json_of(&out);
    let until = st["enforcement_paused_until"]
        .as_u64()
        .unwrap_or_else(|| panic!("no enforcement_paused_until:\n{}", describe(&out)));
    assert!(
        (paused_at + 1800 - 60..=paused_at + 1800 + 5).contains(&until),
        "paused until {until}, paused at {paused_at}"
    );
    assert!(until > now_secs());
    let by = st["enforcement_paused_by"].as_str().unwrap_or_default();
    assert!(
        by.contains(&format!("uid {}", nix::unistd::getuid())),
        "paused by {by:?}"
    );
    let out = setup.agentctl(&["enforce", "resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "enforcement resumed"
    );
    let st = json_of(&setup.agentctl(&["-o", "json", "daemon", "status"]));
    assert!(st["enforcement_paused_until"].is_null(), "{st}");
    let actions: Vec<String> = setup
        .audit_records()
        .iter()
        .filter_map(|r| r["fields"]["NODE_AGENT_ACTION"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(actions, ["enforce-pause", "enforce-resume"]);
    let pause_record = &setup.audit_records()[0];
    assert!(
        pause_record["message"]
            .as_str()
            .is_some_and(|m| m.contains("1800s") && m.ends_with("CHG-1")),
        "{pause_record}"
    );

    // A profile with drift (reloaded): status and verify both exit 1.
    let mut c = daemon.unix().await;
    setup.write_settings(&setup.settings_text(&Opts::observe(&two), None));
    daemon.signal(Signal::SIGHUP);
    poll(
        "the cached verify of e2e-ctl-drift",
        EVENT_TIMEOUT,
        async || {
            let s = status(&mut c).await;
            (profile_name(&s) == "e2e-ctl-drift" && s.summary.is_some_and(|x| x.drift == 1))
                .then_some(())
        },
    )
    .await;
    drop(c);
    let out = setup.agentctl(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let out = setup.agentctl(&["-o", "json", "tune", "verify"]);
    let report = json_of(&out);
    assert_eq!(report["profile"]["name"], "e2e-ctl-drift");
    assert_eq!(
        out.status.code(),
        Some(verdict_of(&report)),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // Stopped: the socket is gone, verify falls back to the configured profile locally and
    // says so; status has nothing to ask.
    let stopped = daemon.stop();
    assert!(
        stopped.success(),
        "SIGTERM: {stopped:?}\n{}",
        daemon.log_text()
    );
    assert!(
        !setup.socket().exists(),
        "the daemon left its socket behind"
    );
    let out = setup.agentctl(&["-o", "json", "tune", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node-agentd is not running"),
        "{}",
        describe(&out)
    );
    let report = json_of(&out);
    assert_eq!(report["profile"]["name"], "e2e-ctl-drift");
    assert_eq!(
        out.status.code(),
        Some(verdict_of(&report)),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let out = setup.agentctl(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Real kernel (NODE_AGENT_PRIVILEGED_TESTS=1, root)

const KNOB: &str = "net.core.somaxconn";

/// `KNOB` held at its current value by a bound (min = max = current): pass while no file sets
/// it, drift the moment it changes.
fn knob_profile(name: &str, current: &str) -> String {
    format!(
        "[profile]\nname = \"{name}\"\n\n[sysctl]\n\"{KNOB}\" = {{ min = {current}, max = {current} }}\n"
    )
}

/// Another valid value for `KNOB`.
fn other_value(current: &str) -> String {
    let n: u64 = current.parse().expect("somaxconn is a number");
    (if n > 128 { n - 1 } else { n + 1 }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_drift_reports_a_sysctl_changed_on_the_real_kernel() {
    if !real::enabled("watch_drift_reports_a_sysctl_changed_on_the_real_kernel") {
        return;
    }
    let _lock = real::tier_lock();
    let _guard = real::Guard::take();
    let current = read_sysctl(KNOB);
    let setup = Setup::new();
    let profile = setup.profile("e2e-watch", &knob_profile("e2e-watch", &current));
    let daemon = setup.start(&Opts::observe(&profile)).await;
    let mut c = daemon.unix().await;
    let s = status(&mut c).await;
    assert_eq!(s.summary.map(|x| x.pass), Some(1), "{s:?}");

    let mut stream = c
        .watch_drift(pb::WatchDriftRequest {
            initial_state: true,
        })
        .await
        .expect("WatchDrift")
        .into_inner();
    let other = other_value(&current);
    let changed_at = now_secs();
    write_sysctl(KNOB, &other);
    let e = next_event(
        &mut stream,
        KNOB,
        pb::DriftTransition::New,
        Duration::from_secs(3),
    )
    .await;
    let item = e.item.expect("item");
    assert_eq!(item.status, pb::ItemStatus::Drift as i32);
    assert_eq!(item.actual.as_deref(), Some(other.as_str()));
    assert_eq!(item.class, pb::Class::Sysctl as i32);
    assert_eq!(e.previous_status, pb::ItemStatus::Pass as i32);
    let at = e.time.expect("time").seconds;
    assert!(
        (changed_at as i64..=now_secs() as i64).contains(&at),
        "{at}"
    );

    write_sysctl(KNOB, &current);
    let e = next_event(
        &mut stream,
        KNOB,
        pb::DriftTransition::Resolved,
        Duration::from_secs(3),
    )
    .await;
    let item = e.item.expect("item");
    assert_eq!(item.status, pb::ItemStatus::Pass as i32);
    assert_eq!(item.actual.as_deref(), Some(current.as_str()));
    assert_eq!(e.previous_status, pb::ItemStatus::Drift as i32);
    assert_eq!(e.previous_actual.as_deref(), Some(other.as_str()));
    drop(stream);
}

/// `apply_on_start`: the profile is applied before the daemon answers (READY), so units
/// ordered after node-agentd start on a tuned host; audited as the daemon's own apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_on_start_tunes_the_host_before_the_daemon_answers() {
    if !real::enabled("apply_on_start_tunes_the_host_before_the_daemon_answers") {
        return;
    }
    let _lock = real::tier_lock();
    let _guard = real::Guard::take();
    let current = read_sysctl(KNOB);
    let other = other_value(&current);
    let setup = Setup::new();
    let profile = setup.profile(
        "e2e-start",
        &format!("[profile]\nname = \"e2e-start\"\n\n[sysctl]\n\"{KNOB}\" = {other}\n"),
    );
    let opts = Opts::observe(&profile);
    let mut text = setup.settings_text(&opts, None);
    text = text.replace(
        "mode = \"observe\"\n",
        "mode = \"observe\"\napply_on_start = true\n",
    );
    assert!(text.contains("apply_on_start = true"), "{text}");
    setup.write_settings(&text);
    let mut daemon = setup.spawn(None);
    daemon.wait_ready().await.expect("node-agentd starts");
    // Ready means applied: no waiting for a verify round.
    assert_eq!(read_sysctl(KNOB), other);
    let mut c = daemon.unix().await;
    let s = status(&mut c).await;
    assert_eq!(s.summary.map(|x| x.drift), Some(0), "{s:?}");
    let records = setup.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["user"] == "node-agentd (apply_on_start)"
                && r["fields"]["NODE_AGENT_KEY"] == KNOB
                && r["fields"]["NODE_AGENT_AFTER"] == other.as_str()),
        "{records:#?}"
    );
    drop(c);
    drop(daemon);
    // The guard restores the sysctl and removes the agent's sysctl.d file.
}

/// The PM QoS hold: while the daemon runs, /dev/cpu_dma_latency reads the profile's value
/// (the kernel keeps the request while the file is open); when it stops, the default again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_holds_pm_qos_at_the_profile_value_while_it_runs() {
    if !real::enabled("the_daemon_holds_pm_qos_at_the_profile_value_while_it_runs") {
        return;
    }
    let read_qos = || -> i32 {
        let b = std::fs::read("/dev/cpu_dma_latency").expect("read /dev/cpu_dma_latency");
        i32::from_ne_bytes(b[..4].try_into().unwrap())
    };
    let before = read_qos();
    let setup = Setup::new();
    let profile = setup.profile(
        "e2e-qos",
        "[profile]\nname = \"e2e-qos\"\n\n[cpu]\npm_qos_latency_us = 7\n",
    );
    let daemon = setup.start(&Opts::observe(&profile)).await;
    assert_eq!(read_qos(), 7, "held while the daemon runs");
    let mut c = daemon.unix().await;
    let report = c
        .verify(pb::VerifyRequest {})
        .await
        .expect("Verify")
        .into_inner()
        .report
        .expect("report");
    assert_eq!(
        statuses_of(&report).get("cpu.pm_qos_latency_us"),
        Some(&pb::ItemStatus::Pass)
    );
    drop(c);
    drop(daemon);
    assert_eq!(read_qos(), before, "released when the daemon ends");
}

fn enforce_records(setup: &Setup) -> Vec<serde_json::Value> {
    setup
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["user"] == "node-agentd (enforce)"
                && r["fields"]["NODE_AGENT_KEY"] == KNOB
                && r["fields"]["NODE_AGENT_ACTION"] == "apply"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_mode_puts_a_sysctl_back_audits_it_and_not_while_paused() {
    if !real::enabled("enforce_mode_puts_a_sysctl_back_audits_it_and_not_while_paused") {
        return;
    }
    let _lock = real::tier_lock();
    // Restores the knob and /etc/sysctl.d/zz-node-agent.conf (which the re-apply writes) after
    // the daemon below has been stopped.
    let _guard = real::Guard::take();
    let current = read_sysctl(KNOB);
    let other = other_value(&current);
    let setup = Setup::new();
    let profile = setup.profile("e2e-enforce", &knob_profile("e2e-enforce", &current));
    let daemon = setup
        .start(&Opts {
            mode: "enforce",
            enforce_targets: &["sysctl"],
            min_interval: "1s",
            ..Opts::observe(&profile)
        })
        .await;
    let mut c = daemon.unix().await;
    let mut stream = c
        .watch_drift(pb::WatchDriftRequest {
            initial_state: false,
        })
        .await
        .expect("WatchDrift")
        .into_inner();

    // Changed by hand: put back within a few intervals, and audited.
    write_sysctl(KNOB, &other);
    poll("the daemon puts it back", EVENT_TIMEOUT, async || {
        (read_sysctl(KNOB) == current).then_some(())
    })
    .await;
    let records = enforce_records(&setup);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["fields"]["NODE_AGENT_BEFORE"], other.as_str());
    assert_eq!(records[0]["fields"]["NODE_AGENT_AFTER"], current.as_str());
    assert_eq!(records[0]["uid"], nix::unistd::getuid().as_raw());

    // Paused: changed again, drift seen, and three intervals later it is still changed.
    let out = setup.agentctl(&["enforce", "pause", "--for", "1h", "--reason", "e2e"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(status(&mut c).await.enforcement_paused_until.is_some());
    write_sysctl(KNOB, &other);
    let seen = next_event(&mut stream, KNOB, pb::DriftTransition::New, EVENT_TIMEOUT).await;
    let seen_at = seen.time.expect("time").seconds;
    poll("three more verifies", EVENT_TIMEOUT, async || {
        let s = status(&mut c).await;
        (s.last_verify.expect("last verify").seconds >= seen_at + 3).then_some(())
    })
    .await;
    assert_eq!(read_sysctl(KNOB), other, "re-applied while paused");
    assert_eq!(enforce_records(&setup).len(), 1);
    let s = status(&mut c).await;
    assert_eq!(s.summary.map(|x| x.drift), Some(1));

    // Resumed: put back again.
    let out = setup.agentctl(&["enforce", "resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    poll(
        "the daemon puts it back after resume",
        EVENT_TIMEOUT,
        async || (read_sysctl(KNOB) == current).then_some(()),
    )
    .await;
    assert_eq!(enforce_records(&setup).len(), 2);
    let e = next_event(
        &mut stream,
        KNOB,
        pb::DriftTransition::Resolved,
        EVENT_TIMEOUT,
    )
    .await;
    assert_eq!(e.item.expect("item").status, pb::ItemStatus::Pass as i32);
    drop(stream);
}

/// CapEff, CapPrm, CapBnd, CapInh and CapAmb of every thread of `pid`, as numbers.
fn caps_of(daemon: &daemon_support::Running) -> Vec<(String, [u64; 5])> {
    daemon
        .thread_status_files()
        .iter()
        .map(|f| {
            let get = |field: &str| {
                u64::from_str_radix(&status_field(f, field), 16)
                    .unwrap_or_else(|e| panic!("{field} of {}: {e}", f.display()))
            };
            (
                f.display().to_string(),
                [
                    get("CapEff"),
                    get("CapPrm"),
                    get("CapBnd"),
                    get("CapInh"),
                    get("CapAmb"),
                ],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_dropped_to_what_the_profile_needs() {
    if !real::enabled("capabilities_are_dropped_to_what_the_profile_needs") {
        return;
    }
    let _lock = real::tier_lock();
    assert!(
        nix::unistd::geteuid().is_root(),
        "{} needs root",
        real::PRIVILEGED_ENV
    );
    let setup = Setup::new();

    // sysctl only: nothing kept, in any set, on any thread.
    let profile = setup.profile("e2e-caps-none", &compliant_profile("e2e-caps-none"));
    let mut daemon = setup.start(&Opts::observe(&profile)).await;
    // A Verify first, so the blocking pool's threads exist too.
    daemon
        .unix()
        .await
        .verify(pb::VerifyRequest {})
        .await
        .expect("Verify");
    let caps = caps_of(&daemon);
    assert!(caps.len() >= 2, "{caps:?}");
    for (thread, sets) in &caps {
        assert_eq!(
            sets, &[0; 5],
            "{thread}: CapEff, CapPrm, CapBnd, CapInh, CapAmb"
        );
    }
    assert!(daemon.log_text().contains("capabilities kept: none"));
    assert!(daemon.stop().success());

    // Swap rules: CAP_SYS_ADMIN (bit 21) and nothing else.
    let sys_admin = 1u64 << 21;
    let profile = setup.profile(
        "e2e-caps-swap",
        "[profile]\nname = \"e2e-caps-swap\"\n\n[memory]\nswap = \"off\"\n",
    );
    let daemon = setup.start(&Opts::observe(&profile)).await;
    daemon
        .unix()
        .await
        .verify(pb::VerifyRequest {})
        .await
        .expect("Verify");
    for (thread, sets) in &caps_of(&daemon) {
        assert_eq!(
            sets,
            &[sys_admin, sys_admin, sys_admin, 0, 0],
            "{thread}: CapEff, CapPrm, CapBnd, CapInh, CapAmb"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_its_threads_stay_on_the_housekeeping_cpus() {
    if !real::enabled("the_daemon_and_its_threads_stay_on_the_housekeeping_cpus") {
        return;
    }
    let _lock = real::tier_lock();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let cpus = real::parse_cpu_list(&online).expect("online CPUs");
    assert!(
        cpus.contains(&0) && cpus.contains(&1),
        "needs CPUs 0 and 1 online: {online}"
    );
    let setup = Setup::new();
    // Verify only (observe mode): the isolation checks read IRQs, workqueues and PID 1.
    let profile = setup.profile(
        "e2e-pinned",
        "[profile]\nname = \"e2e-pinned\"\n\n[isolation]\nhousekeeping_cpus = \"0\"\n\
         isolated_cpus = \"1\"\n",
    );
    let daemon = setup.start(&Opts::observe(&profile)).await;
    daemon
        .unix()
        .await
        .verify(pb::VerifyRequest {})
        .await
        .expect("Verify");
    let threads = daemon.thread_status_files();
    assert!(threads.len() >= 2, "{threads:?}");
    for f in &threads {
        assert_eq!(status_field(f, "Cpus_allowed_list"), "0", "{}", f.display());
    }
    assert!(
        daemon
            .log_text()
            .contains("pinned to the housekeeping CPUs 0")
    );
}

/// Server reflection (v1alpha, what grpcurl 1.8 speaks, and v1) and grpc.health.v1 on the real
/// daemon: grpcurl can list and call it without the .proto files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_are_served() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let setup = Setup::new();
    let profile = setup.profile("e2e-reflect", &compliant_profile("e2e-reflect"));
    let daemon = setup.start(&Opts::observe(&profile)).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("unix://{}", daemon.socket.display()))
            .unwrap()
            .connect()
            .await
            .expect("connect");

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("an answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for want in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "nodeagent.v1.NodeAgent",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    // Reflection v1 answers too (newer clients).
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut v1 = ServerReflectionClient::new(channel.clone());
        let mut answers = v1
            .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "nodeagent.v1.NodeAgent".into(),
                )),
            }]))
            .await
            .expect("reflection v1")
            .into_inner();
        let answer = answers
            .message()
            .await
            .expect("an answer")
            .expect("one message");
        assert!(
            matches!(
                answer.message_response,
                Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
            ),
            "{answer:?}"
        );
    }

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nodeagent.v1.NodeAgent".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

// ---------------------------------------------------------------------------------------------
// Stopping with subscribers

/// SIGTERM ends open WatchDrift streams cleanly (end of stream, status OK) and the daemon exits
/// 0: a graceful stop does not wait for subscribers (such as the collector) to hang up, nor
/// cut them off with a broken connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_drift_streams_cleanly() {
    let setup = Setup::new();
    let (text, _) = drifted_profile("e2e-stop");
    let profile = setup.profile("e2e-stop", &text);
    let mut daemon = setup.start(&Opts::observe(&profile)).await;
    let mut client = daemon.unix().await;
    let mut stream = client
        .watch_drift(pb::WatchDriftRequest {
            initial_state: true,
        })
        .await
        .expect("WatchDrift")
        .into_inner();
    next_event(
        &mut stream,
        DRIFT_KEY,
        pb::DriftTransition::New,
        EVENT_TIMEOUT,
    )
    .await;
    daemon.signal(Signal::SIGTERM);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "a clean end of stream: {end:?}");
    let status = daemon.stop();
    assert!(status.success(), "{status:?}\n{}", daemon.log_text());
}
