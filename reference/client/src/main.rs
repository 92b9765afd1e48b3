//! `chatify`: end-to-end-encrypted chat from the terminal.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chatify_client::connection::is_code;
use chatify_client::state::{StateFile, StoredMessage};
use chatify_client::{
    Client, ClientError, ConnectOptions, Event, FileProgress, Incoming, LoginRequest, Passphrase,
    parse_peer,
};
use chatify_proto::ErrorCode;
use clap::{Parser, Subcommand};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Parser)]
#[command(
    name = "chatify",
    version,
    about = "End-to-end-encrypted chat from the terminal",
    long_about = "End-to-end-encrypted chat from the terminal.\n\n\
        Messages are encrypted on this device and decrypted only on the recipient's; the \
        server relays and stores ciphertext only. Keys, sessions and received messages are \
        kept in --home (state.cbor and messages.cbor, mode 0600), encrypted under a passphrase \
        asked for in the terminal (or given by CHATIFY_PASSPHRASE or --passphrase-file).\n\n\
        Typical use, in two terminals:\n  \
        chatify --home ~/.chatify-alice register alice\n  \
        chatify --home ~/.chatify-alice login alice\n  \
        chatify --home ~/.chatify-alice chat bob"
)]
struct Cli {
    /// Server URL (ws:// or wss://). Defaults to the server of the last login,
    /// or ws://127.0.0.1:8080.
    #[arg(long, global = true, env = "CHATIFY_SERVER")]
    server: Option<String>,

    /// Directory holding this device's keys, sessions and messages.
    #[arg(long, global = true, env = "CHATIFY_HOME")]
    home: Option<PathBuf>,

    /// PEM file of the CA that signed a wss:// server's certificate.
    #[arg(long, global = true, env = "CHATIFY_CA_CERT")]
    ca_cert: Option<PathBuf>,

    /// Directory where received files are saved [default: downloads in
    /// --home].
    #[arg(long, global = true, env = "CHATIFY_DOWNLOADS")]
    downloads: Option<PathBuf>,

    /// File whose first line is the passphrase that encrypts --home (else
    /// the CHATIFY_PASSPHRASE variable, else a prompt in the terminal).
    #[arg(long, global = true, env = "CHATIFY_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account (asks for a password of at least 8 characters).
    Register {
        /// User name: 1-64 characters of a-z, 0-9, '.', '_', '-'.
        user: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log in on this device: creates its keys (first time) and publishes them.
    Login {
        /// User name.
        user: String,
        /// Device number within the account.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        device: u32,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Link this new device to the account's identity with the code
        /// `chatify link` printed on one of its devices (the home must be new).
        #[arg(long, value_name = "CODE")]
        link: Option<String>,
        /// The account's second factor: the code its authenticator app
        /// shows, or a recovery code (asked for in a terminal when needed).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// Two-factor authentication for your account (TOTP, as authenticator
    /// apps compute it): `setup`, then `confirm CODE`; `disable CODE`.
    Mfa {
        #[command(subcommand)]
        action: MfaAction,
    },
    /// Print a code that links a new device to this account's identity, so
    /// that contacts see it as you (then `chatify login USER --device N --link
    /// CODE` on the new device).
    Link,
    /// List a user's devices (yours by default) as the server knows them.
    Devices {
        /// The user.
        user: Option<String>,
    },
    /// Remove one of your devices from the server (a lost or old one): its
    /// keys, tokens and waiting messages are deleted.
    RemoveDevice {
        /// The device number.
        device: u32,
    },
    /// Send one message and exit once the server stored it (or, with --wait,
    /// once the recipient's device confirms it received it).
    Send {
        /// Recipient: `user` or `user:device`.
        peer: String,
        /// The message.
        text: String,
        /// Seconds to wait for the recipient device's encrypted receipt
        /// ("delivered to bob"); 0 exits once the server stored it.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Send a file, end-to-end encrypted: it is sealed on this device in
    /// 64 KiB chunks under a fresh key and uploaded as ciphertext; the key
    /// travels in an encrypted message. Interrupted, run the same command
    /// again: it resumes. The recipient's `inbox` or `chat` saves it in
    /// their --downloads directory.
    SendFile {
        /// Recipient: `user` or `user:device`.
        peer: String,
        /// The file.
        path: PathBuf,
        /// A caption sent with it.
        #[arg(long, default_value = "")]
        caption: String,
    },
    /// Chat interactively: type lines to send them; the peer's lines appear as they arrive.
    Chat {
        /// The other person: `user` or `user:device`.
        peer: String,
    },
    /// Receive waiting messages, print them, and exit when none arrives for --wait seconds.
    Inbox {
        /// Seconds of silence before exiting.
        #[arg(long, default_value_t = 2)]
        wait: u64,
        /// Also print messages received earlier (kept on this device).
        #[arg(long)]
        all: bool,
    },
    /// Group chats: `create USER...`, `send GROUP TEXT`, `add GROUP USER`,
    /// `remove GROUP USER`, `leave GROUP`, `list`. GROUP is the start of the
    /// group's id as `list` prints it. Membership is signed by members and
    /// checked by every member's client; messages are read with `inbox` or
    /// `chat`.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Show the safety numbers with a user's devices; --confirm after comparing them in person.
    Verify {
        /// The user (`user`, or `user:device`: every device of the user is shown).
        peer: String,
        /// Mark every shown number as verified (accepting changed identities and new devices).
        #[arg(long)]
        confirm: bool,
    },
    /// Revoke this device's session token.
    Logout,
    /// Change the passphrase that encrypts --home (asks for the new one twice,
    /// or reads it from the CHATIFY_NEW_PASSPHRASE variable).
    Passphrase,
}

#[derive(Debug, Subcommand)]
enum GroupAction {
    /// Make a group of you and these users (each must have published keys);
    /// prints its id.
    Create {
        /// The other members.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Send one message to every member's devices.
    Send {
        /// The group (the start of its id).
        group: String,
        /// The message.
        text: String,
    },
    /// Add a user (admins only).
    Add {
        /// The group (the start of its id).
        group: String,
        /// The user.
        user: String,
    },
    /// Remove a member (admins only); the others start new keys, so the
    /// member reads nothing sent after.
    Remove {
        /// The group (the start of its id).
        group: String,
        /// The member.
        user: String,
    },
    /// Leave a group.
    Leave {
        /// The group (the start of its id).
        group: String,
    },
    /// List your groups and their members (`*` marks admins).
    List,
}

#[derive(Debug, Subcommand)]
enum MfaAction {
    /// Make a new secret and print it (and its otpauth:// URI) for an
    /// authenticator app; logins need no code until `confirm`.
    Setup,
    /// Turn two-factor authentication on with the code the app shows now;
    /// prints ten single-use recovery codes (keep them somewhere safe).
    Confirm {
        /// The six-digit code.
        code: String,
    },
    /// Turn it off, with a current code or a recovery code.
    Disable {
        /// A six-digit code or a recovery code.
        code: String,
    },
}

fn home_dir(cli: &Cli) -> PathBuf {
    cli.home.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".chatify")
    })
}

fn options(cli: &Cli, url: String) -> Result<ConnectOptions, ClientError> {
    let options = ConnectOptions::new(url);
    match &cli.ca_cert {
        Some(pem) => options.with_ca_cert(pem),
        None => Ok(options),
    }
}

/// The second factor, asked for in the terminal (a login that needed one
/// and was given none).
fn ask_second_factor() -> Result<zeroize::Zeroizing<String>, ClientError> {
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        return Err(ClientError::Usage(
            "this account needs a second factor: add --code CODE (from its authenticator app, or a recovery code)"
                .into(),
        ));
    }
    let io = |e: std::io::Error| ClientError::io("the terminal", e);
    let code =
        rpassword::prompt_password("Code from your authenticator app (or a recovery code): ")
            .map_err(io)?;
    Ok(zeroize::Zeroizing::new(code.trim().to_owned()))
}

fn read_password(from_stdin: bool, confirm: bool) -> Result<String, ClientError> {
    let io = |e: std::io::Error| ClientError::io("standard input or the terminal", e);
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(io)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password("Password: ").map_err(io)?;
    if confirm {
        let again = rpassword::prompt_password("Repeat password: ").map_err(io)?;
        if again != first {
            return Err(ClientError::Usage("the passwords differ".into()));
        }
    }
    Ok(first)
}

/// The passphrase of `home`: from --passphrase-file, CHATIFY_PASSPHRASE, or
/// the terminal (twice, when the home is new).
fn passphrase(cli: &Cli, home: &std::path::Path) -> Result<Passphrase, ClientError> {
    let io = |e: std::io::Error| ClientError::io("the terminal", e);
    if let Some(path) = &cli.passphrase_file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| ClientError::io(path, e))?,
        );
        return Ok(Passphrase::new(text.lines().next().unwrap_or_default()));
    }
    if let Some(secret) = std::env::var_os("CHATIFY_PASSPHRASE") {
        let secret = secret
            .into_string()
            .map_err(|_| ClientError::Usage("CHATIFY_PASSPHRASE is not UTF-8".into()))?;
        return Ok(Passphrase::new(secret));
    }
    if !std::io::stderr().is_terminal() && !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "no passphrase for the home directory: set CHATIFY_PASSPHRASE or \
             --passphrase-file, or run in a terminal"
                .into(),
        ));
    }
    if home.join("key.cbor").exists() {
        let secret = rpassword::prompt_password(format!("Passphrase for {}: ", home.display()))
            .map_err(io)?;
        return Ok(Passphrase::new(secret));
    }
    new_passphrase(&format!(
        "Choose a passphrase to encrypt {} (empty: none, files protected by their permissions only): ",
        home.display()
    ))
}

/// A new passphrase, typed twice (or CHATIFY_NEW_PASSPHRASE).
fn new_passphrase(prompt: &str) -> Result<Passphrase, ClientError> {
    let io = |e: std::io::Error| ClientError::io("the terminal", e);
    if let Some(secret) = std::env::var_os("CHATIFY_NEW_PASSPHRASE") {
        let secret = secret
            .into_string()
            .map_err(|_| ClientError::Usage("CHATIFY_NEW_PASSPHRASE is not UTF-8".into()))?;
        return Ok(Passphrase::new(secret));
    }
    let first = zeroize::Zeroizing::new(rpassword::prompt_password(prompt).map_err(io)?);
    let again = zeroize::Zeroizing::new(rpassword::prompt_password("Repeat it: ").map_err(io)?);
    if *again != *first {
        return Err(ClientError::Usage("the passphrases differ".into()));
    }
    Ok(Passphrase::new(first.as_str()))
}

/// This device's home, owned and unlocked.
fn open_home(cli: &Cli) -> Result<StateFile, ClientError> {
    let home = home_dir(cli);
    let file = StateFile::acquire(&home, chatify_client::OWNER_WAIT)?;
    let passphrase = passphrase(cli, &home)?;
    file.unlock(&passphrase)
}

fn print_message(m: &Incoming) {
    let mut out = std::io::stdout().lock();
    let user = &m.from.user;
    let user = &match m.group {
        Some(g) => format!("[group {}] {user}", &chatify_proto::hex::lower(&g)[..8]),
        None => user.clone(),
    };
    if m.warning.is_some() {
        let _ = writeln!(
            out,
            "!! NOT VERIFIED: {user}:{} presents an identity that is not {user}'s (a device {user} did not link, or {user} changed identity). Sending to {user} is blocked until you compare safety numbers and run `chatify verify {user} --confirm`",
            m.from.device
        );
    }
    if let Some(late) = m.late {
        let _ = writeln!(
            out,
            "!! the next message from {user} arrives late: {} later message(s) came first, {:.1} s ago",
            late.behind,
            late.waited_ms as f64 / 1000.0
        );
    }
    match &m.file {
        Some(f) => {
            let _ = writeln!(
                out,
                "{user}: [file {:?}, {} bytes] {}",
                f.name,
                f.size,
                String::from_utf8_lossy(&m.text)
            );
        }
        None => {
            let _ = writeln!(out, "{user}: {}", String::from_utf8_lossy(&m.text));
        }
    }
    let _ = out.flush();
}

/// Handles what is waiting (printing it) until nothing arrives for 300 ms.
async fn drain(client: &mut Client) -> Result<(), ClientError> {
    let quiet = Duration::from_millis(300);
    while let Ok(Some(push)) = tokio::time::timeout(quiet, client.next_push()).await {
        for event in client.handle(push).await? {
            print_event(&event);
        }
    }
    Ok(())
}

async fn group_command(client: &mut Client, action: &GroupAction) -> Result<(), ClientError> {
    let short = |g: &[u8; 16]| chatify_proto::hex::lower(g)[..8].to_owned();
    match action {
        GroupAction::Create { members } => {
            let names: Vec<&str> = members.iter().map(String::as_str).collect();
            let id = client.create_group(&names).await?;
            println!("created group {} with {}", short(&id), members.join(", "));
        }
        GroupAction::Send { group, text } => {
            let id = client.find_group(group)?;
            let receipt = client.send_group(&id, text.as_bytes()).await?;
            println!(
                "sent to group {} (stored for {} device(s))",
                short(&id),
                receipt.devices
            );
        }
        GroupAction::Add { group, user } => {
            let id = client.find_group(group)?;
            client.add_to_group(&id, user).await?;
            println!("added {user} to group {}", short(&id));
        }
        GroupAction::Remove { group, user } => {
            let id = client.find_group(group)?;
            client.remove_from_group(&id, user).await?;
            println!("removed {user} from group {}", short(&id));
        }
        GroupAction::Leave { group } => {
            let id = client.find_group(group)?;
            client.leave_group(&id).await?;
            println!("left group {}", short(&id));
        }
        GroupAction::List => {
            for g in client.groups()? {
                let members: Vec<String> = g
                    .members
                    .iter()
                    .map(|(u, admin)| if *admin { format!("{u}*") } else { u.clone() })
                    .collect();
                let left = if g.left {
                    " (you are no longer a member)"
                } else {
                    ""
                };
                println!("{}  {}{left}", short(&g.id), members.join(", "));
            }
        }
    }
    Ok(())
}

/// Prints a transfer's progress on standard error, once per percent.
fn progress_line(what: &str) -> impl FnMut(FileProgress) + '_ {
    let mut shown = None;
    move |p: FileProgress| {
        let percent = (p.done * 100).checked_div(p.total).unwrap_or(100);
        if shown != Some(percent) {
            shown = Some(percent);
            eprint!("\r{what}: {percent}% of {} bytes", p.total);
            if p.done == p.total {
                eprintln!();
            }
        }
    }
}

/// Saves the file a message carries into --downloads, unless its sender is
/// not trusted (then it waits in the log until the user verifies them).
async fn save_file(client: &mut Client, cli: &Cli, m: &StoredMessage) -> Result<(), ClientError> {
    let Some(file) = &m.file else {
        return Ok(());
    };
    if client.is_blocked(&m.from.user) {
        eprintln!(
            "(not saving {:?} from {}: verify them first, then run `chatify inbox`)",
            file.name, m.from.user
        );
        return Ok(());
    }
    let dir = downloads_dir(cli);
    let what = format!("receiving {:?} from {}", file.name, m.from.user);
    match client
        .save_file(&m.message_id, file, &dir, &mut progress_line(&what))
        .await
    {
        Ok(saved) => {
            println!(
                "saved {:?} from {} ({} bytes) as {}",
                file.name,
                m.from.user,
                saved.size,
                saved.path.display()
            );
            Ok(())
        }
        Err(e @ ClientError::File(_)) => {
            println!(
                "!! the file {:?} from {} was not saved: {e}",
                file.name, m.from.user
            );
            Ok(())
        }
        Err(e) if is_code(&e, ErrorCode::NotFound) => {
            println!(
                "!! the file {:?} from {} is no longer on the server",
                file.name, m.from.user
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Saves the files of these events' messages.
async fn save_files(client: &mut Client, cli: &Cli, events: &[Event]) -> Result<(), ClientError> {
    for event in events {
        if let Event::Message(m) = event
            && m.file.is_some()
            && m.warning.is_none()
        {
            let stored = StoredMessage {
                from: m.from.clone(),
                sent_at_ms: m.sent_at_ms,
                message_id: m.message_id,
                text: Vec::new(),
                file: m.file.as_deref().cloned(),
                group: None,
            };
            save_file(client, cli, &stored).await?;
        }
    }
    Ok(())
}

/// Saves the files of earlier messages that were not saved (a download
/// interrupted, or a sender verified since).
async fn save_earlier_files(client: &mut Client, cli: &Cli) -> Result<(), ClientError> {
    for m in client.unsaved_files()? {
        save_file(client, cli, &m).await?;
    }
    Ok(())
}

fn downloads_dir(cli: &Cli) -> PathBuf {
    cli.downloads
        .clone()
        .unwrap_or_else(|| home_dir(cli).join("downloads"))
}

fn print_event(event: &Event) -> bool {
    match event {
        Event::Message(m) => print_message(m),
        Event::Rejected { from, reason, .. } => {
            eprintln!(
                "(dropped an envelope claiming to be from {}: {reason})",
                from.user
            )
        }
        Event::Missing { from, count } => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "!! {count} message(s) from {}:{} are missing: later ones arrived and these did not (the server dropped or is holding them)",
                from.user, from.device
            );
            let _ = out.flush();
        }
        Event::Delivered { to, message_ids } if !message_ids.is_empty() => {
            eprintln!(
                "(delivered to {}:{}: {} message(s))",
                to.user,
                to.device,
                message_ids.len()
            );
        }
        Event::Undelivered {
            to,
            message_ids,
            unlisted,
        } => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "!! {} message(s) to {}:{} stored by the server but not delivered: no receipt from that device (it may be offline, or the server lost or is holding them)",
                message_ids.len() as u64 + unlisted,
                to.user,
                to.device
            );
            let _ = out.flush();
        }
        Event::Resent { to, .. } => {
            eprintln!(
                "({}:{} could not open a message of yours; sent it again on a new session)",
                to.user, to.device
            );
        }
        Event::NotResent { to, .. } => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "!! {}:{} could not open a message of yours and it can no longer be sent again: send it again",
                to.user, to.device
            );
            let _ = out.flush();
        }
        Event::GroupChanged { group, changes, .. } => {
            let mut out = std::io::stdout().lock();
            let id = &chatify_proto::hex::lower(group)[..8];
            for change in changes {
                let _ = writeln!(out, "[group {id}] {change}");
            }
            let _ = out.flush();
        }
        Event::Duplicate { .. }
        | Event::KeysReplenished(_)
        | Event::Delivered { .. }
        | Event::RetryRequested { .. } => {}
        Event::Disconnected(info) => {
            match info {
                Some((code, reason)) => eprintln!("disconnected by the server ({code}: {reason})"),
                None => eprintln!("disconnected from the server"),
            }
            return false;
        }
        _ => {}
    }
    true
}

/// The client of the last login. Every command but `chat` sends at most one
/// message, so it reserves one key: a run of one-shot commands leaves the
/// peer no gaps to bridge (docs/PROTOCOL.md §13.1).
async fn resume(cli: &Cli) -> Result<Client, ClientError> {
    let mut client = resume_with_home(cli).await?;
    client.set_send_reservation(1);
    Ok(client)
}

async fn resume_with_home(cli: &Cli) -> Result<Client, ClientError> {
    let home = home_dir(cli);
    if !home.join("key.cbor").exists() && !home.join("state.cbor").exists() {
        return Err(ClientError::NotLoggedIn);
    }
    let file = open_home(cli)?;
    match &cli.server {
        Some(url) => Client::resume_with(file, Some(&options(cli, url.clone())?)).await,
        None if cli.ca_cert.is_some() => {
            let state = file.load()?.ok_or(ClientError::NotLoggedIn)?;
            let options = options(cli, state.server.clone())?;
            Client::resume_with(file, Some(&options)).await
        }
        None => Client::resume_with(file, None).await,
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let default_url = || "ws://127.0.0.1:8080".to_owned();
    match &cli.command {
        Command::Register {
            user,
            password_stdin,
        } => {
            let password = read_password(*password_stdin, true)?;
            let url = cli.server.clone().unwrap_or_else(default_url);
            Client::register(&options(&cli, url)?, user, &password).await?;
            println!("registered {user}; now run `chatify login {user}`");
        }
        Command::Login {
            user,
            device,
            password_stdin,
            link,
            code,
        } => {
            let password = read_password(*password_stdin, false)?;
            let home = home_dir(&cli);
            let file = open_home(&cli)?;
            let url = match &cli.server {
                Some(u) => u.clone(),
                None => file.load()?.map(|s| s.server).unwrap_or_else(default_url),
            };
            let options = options(&cli, url)?;
            let mut request = LoginRequest {
                user,
                password: &password,
                device: *device,
                link_code: link.as_deref(),
                second_factor: code.as_deref(),
            };
            let client = match Client::login_request(&options, file.clone(), &request).await {
                Err(e) if code.is_none() && is_code(&e, ErrorCode::SecondFactorRequired) => {
                    let asked = ask_second_factor()?;
                    request.second_factor = Some(&asked);
                    Client::login_request(&options, file, &request).await?
                }
                other => other?,
            };
            println!(
                "logged in as {}:{}; keys published; state in {}{}",
                user,
                device,
                home.display(),
                if link.is_some() {
                    format!("; linked: this device is {user} to your contacts")
                } else {
                    String::new()
                }
            );
            client.close().await;
        }
        Command::Mfa { action } => {
            let client = resume(&cli).await?;
            let me = client.address().user;
            match action {
                MfaAction::Setup => {
                    let secret = client.mfa_setup().await?;
                    let key = secret
                        .uri
                        .split_once("secret=")
                        .and_then(|(_, rest)| rest.split('&').next())
                        .unwrap_or_default();
                    println!(
                        "enter this secret into your authenticator app (time-based, 6 digits, 30 s):"
                    );
                    println!("  {key}");
                    println!("or open this URI with it: {}", secret.uri.as_str());
                    println!("then: chatify mfa confirm CODE (with the code the app shows)");
                }
                MfaAction::Confirm { code } => {
                    let codes = client.mfa_confirm(code).await?;
                    println!("two-factor authentication is on for {me}; logins now need a code.");
                    println!(
                        "recovery codes (each works once, instead of a code; shown only now):"
                    );
                    for c in &codes {
                        println!("  {}", c.as_str());
                    }
                }
                MfaAction::Disable { code } => {
                    client.mfa_disable(code).await?;
                    println!("two-factor authentication is off for {me}");
                }
            }
            client.close().await;
        }
        Command::Link => {
            let mut client = resume(&cli).await?;
            let code = client.create_link().await?;
            let me = client.address();
            println!("link code (valid 10 minutes, once): {code}");
            println!(
                "on the new device: chatify --home NEW_HOME login {} --device N --link {code}",
                me.user
            );
            client.close().await;
        }
        Command::Devices { user } => {
            let mut client = resume(&cli).await?;
            let user = user.clone().unwrap_or_else(|| client.address().user);
            let list = client.device_list(&user).await?;
            let list: Vec<String> = list.iter().map(u32::to_string).collect();
            println!("{user}: device(s) {}", list.join(", "));
            client.close().await;
        }
        Command::RemoveDevice { device } => {
            let mut client = resume(&cli).await?;
            client.remove_device(*device).await?;
            println!(
                "removed device {device} of {}: its keys, session tokens and waiting messages are gone",
                client.address().user
            );
            client.close().await;
        }
        Command::Send { peer, text, wait } => {
            let mut client = resume(&cli).await?;
            let receipt = client.send(peer, text.as_bytes()).await?;
            let (user, _) = chatify_client::parse_target(peer)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(*wait);
            // Every device the copy went to sends its own receipt.
            let mut delivered = std::collections::BTreeSet::new();
            while delivered.len() < receipt.devices as usize && *wait > 0 {
                let push = match tokio::time::timeout_at(deadline, client.next_push()).await {
                    Err(_) | Ok(None) => break,
                    Ok(Some(push)) => push,
                };
                for event in client.handle(push).await? {
                    if let Event::Delivered { to, message_ids } = &event
                        && message_ids.contains(&receipt.message_id)
                    {
                        delivered.insert(to.device);
                    }
                    print_event(&event);
                }
            }
            if delivered.len() == receipt.devices as usize {
                println!("delivered to {user}");
            } else if !delivered.is_empty() {
                println!(
                    "delivered to {} of {user}'s {} devices; stored by the server for the others",
                    delivered.len(),
                    receipt.devices
                );
            } else {
                println!(
                    "stored by the server (sequence number {}); not yet delivered to {user}",
                    receipt.seq
                );
            }
            client.close().await;
        }
        Command::Group { action } => {
            let mut client = resume(&cli).await?;
            // Changes and keys other members sent come first.
            drain(&mut client).await?;
            group_command(&mut client, action).await?;
            client.close().await;
        }
        Command::SendFile {
            peer,
            path,
            caption,
        } => {
            let mut client = resume(&cli).await?;
            let what = format!("sending {}", path.display());
            let receipt = client
                .send_file(peer, path, caption, &mut progress_line(&what))
                .await?;
            println!(
                "sent {} to {peer} (stored for {} device(s))",
                path.display(),
                receipt.devices
            );
            client.close().await;
        }
        Command::Inbox { wait, all } => {
            let mut client = resume(&cli).await?;
            if *all {
                for m in &client.messages()? {
                    println!("{}: {}", m.from.user, String::from_utf8_lossy(&m.text));
                }
            }
            save_earlier_files(&mut client, &cli).await?;
            let mut received = 0usize;
            loop {
                // Only the wait for a push is timed (it is cancel-safe); the
                // push is then handled to its end, its save and its
                // acknowledgement included.
                let push = match tokio::time::timeout(
                    Duration::from_secs(*wait),
                    client.next_push(),
                )
                .await
                {
                    Err(_) | Ok(None) => break,
                    Ok(Some(push)) => push,
                };
                let mut open = true;
                let events = client.handle(push).await?;
                for event in &events {
                    if matches!(event, Event::Message(_)) {
                        received += 1;
                    }
                    open &= print_event(event);
                }
                save_files(&mut client, &cli, &events).await?;
                if !open {
                    break;
                }
            }
            for event in client.tick().await? {
                print_event(&event);
            }
            eprintln!("{received} new message(s)");
            client.close().await;
        }
        Command::Chat { peer } => {
            let mut client = resume(&cli).await?;
            // A conversation: one save covers the next 64 sends.
            client.set_send_reservation(chatify_core::MAX_RESERVED_SENDS);
            let target = parse_peer(peer)?;
            if let Some(n) = client.safety_number(&target.user) {
                eprintln!("safety number with {}:\n{n}", target.user);
            }
            eprintln!(
                "chatting with {} — type a line and press Enter; Ctrl-D to quit",
                target.user
            );
            save_earlier_files(&mut client, &cli).await?;
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            // Receipts go out, and gaps and undelivered messages are
            // reported when they outlive their grace period, even while
            // nothing arrives.
            let mut missing_check = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(line)) if line.trim().is_empty() => {}
                        Ok(Some(line)) => {
                            if let Err(e) = client.send(peer, line.as_bytes()).await {
                                eprintln!("not sent: {e}");
                                if matches!(e, ClientError::Disconnected) {
                                    return Err(e);
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Err(ClientError::io("standard input", e)),
                    },
                    push = client.next_push() => match push {
                        Some(push) => {
                            let mut open = true;
                            let events = client.handle(push).await?;
                            for event in &events {
                                open &= print_event(event);
                            }
                            save_files(&mut client, &cli, &events).await?;
                            if !open {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = missing_check.tick() => {
                        for event in client.tick().await? {
                            print_event(&event);
                        }
                    }
                }
            }
            client.close().await;
        }
        Command::Verify { peer, confirm } => {
            let home = home_dir(&cli);
            let mut client = resume(&cli).await?;
            let user = parse_peer(peer)?.user;
            let devices = client.devices(&user);
            if devices.is_empty() {
                return Err(ClientError::Usage(format!(
                    "no identity known for {user} yet: send them a message or receive one first"
                )));
            }
            // One identity per user: one number, whatever the device; a
            // device presenting another is listed with its own number.
            if let Some(number) = client.safety_number(&user) {
                println!("safety number with {user}:\n{number}");
            }
            let pin = client.state().pins.get(&user).cloned();
            match &pin {
                Some(p) if p.changed_to.is_some() => println!(
                    "!! {user}'s identity CHANGED (or a device not linked by {user} appeared): compare this number with {user} before confirming"
                ),
                Some(p) if p.verified => println!("(verified)"),
                _ => {}
            }
            for (addr, number, warning) in &devices {
                match warning {
                    Some(_) => println!(
                        "!! {user}:{} presents another identity:\n{number}",
                        addr.device
                    ),
                    None => println!("{user}:{} presents {user}'s identity", addr.device),
                }
            }
            if *confirm {
                client.confirm_peer(&user)?;
                println!(
                    "marked {user} ({} device(s)) as verified (state in {})",
                    devices.len(),
                    home.display()
                );
            }
            client.close().await;
        }
        Command::Logout => {
            let client = resume(&cli).await?;
            client.logout().await?;
            println!("logged out");
        }
        Command::Passphrase => {
            let home = home_dir(&cli);
            let file = StateFile::acquire(&home, chatify_client::OWNER_WAIT)?;
            if !file.key_path().exists() {
                return Err(ClientError::NotLoggedIn);
            }
            let old = passphrase(&cli, &home)?;
            let new = new_passphrase("New passphrase (empty: none): ")?;
            file.change_passphrase(&old, &new)?;
            println!("passphrase of {} changed", home.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatify: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatify: {e}");
            ExitCode::from(1)
        }
    }
}
