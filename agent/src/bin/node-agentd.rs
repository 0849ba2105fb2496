//! node-agentd: see `node_agent::daemon`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
