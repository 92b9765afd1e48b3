//! `chatify-server`: the Chatify reference server.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    chatify_server::cli::main()
}
