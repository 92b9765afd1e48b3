//! Second-factor runs (scenarios with an `[mfa]` table): users turn TOTP
//! on and log in with codes while an attacker who knows every password
//! replays what it saw and guesses the rest, all through the real server
//! and the protocol's frames (docs/PROTOCOL.md §9.5).
//!
//! ```text
//!  per user:  Register ─▶ Login (password only: timed) ─▶ MfaSetup ─▶ MfaConfirm(code t)
//!             Login without a code            (must be refused)
//!             Login with code t               (the confirming code, replayed: refused)
//!             Login with code t+1             (honest: timed)   ─▶ replayed (refused)
//!             Login with a recovery code ×k   (honest: timed)   ─▶ each replayed (refused)
//!             Login with code t+3, another user's code (refused)
//!             wrong codes ×g                  (refused; past five, RateLimited unread)
//!  after:     the store's files searched for every secret and recovery code
//! ```
//!
//! The attacker shares the users' address (loopback), so the run raises the
//! per-address failed-login limit: the per-account limit is what is
//! measured.

use anyhow::{Context as _, Result, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chatify_proto::frame;
use chatify_proto::{Body, ErrorCode};
use chatify_server::mfa;
use chatify_server::store::SqliteStore;
use chatify_server::store::sqlite::Durability;
use chatify_server::{Config, Server};

use crate::load::abuse::{Ws, ask, connect};
use crate::metrics::Check;
use crate::plaintext::Detector;
use crate::scenario::{Mfa, Scenario};
use crate::taps;
use crate::topology::CHEAP_ARGON2;

/// What a second-factor run measured and saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct MfaTally {
    pub(crate) users: usize,
    /// Login times (µs, request to reply) by kind.
    pub(crate) password_only_us: Vec<u64>,
    pub(crate) with_code_us: Vec<u64>,
    pub(crate) with_recovery_us: Vec<u64>,
    /// Logins with a right password and no code, and how many got in.
    pub(crate) without_code: u64,
    pub(crate) without_code_accepted: u64,
    /// Honest logins (a fresh code, an unused recovery code) refused.
    pub(crate) honest_refused: u64,
    /// Codes presented again (TOTP and recovery), or out of reach (a code
    /// three steps ahead, another user's code), and how many got in.
    pub(crate) replays: u64,
    pub(crate) replays_accepted: u64,
    /// Replays the server looked at and refused (the rest were answered
    /// `RateLimited` unread, past the per-account limit).
    pub(crate) replays_checked: u64,
    /// Wrong codes tried, how many got in, how many were answered
    /// `RateLimited` without being looked at, and the most wrong codes
    /// one account had looked at.
    pub(crate) guesses: u64,
    pub(crate) guesses_accepted: u64,
    pub(crate) guesses_rate_limited: u64,
    pub(crate) most_guesses_checked: u64,
    /// Bytes of the store's files searched, and what was found there.
    pub(crate) store_bytes: u64,
    /// Recovery codes issued (all searched for in the store).
    pub(crate) recovery_codes: usize,
    pub(crate) store_found: Vec<String>,
}

/// The outcome: what was measured and the checks.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct MfaOutcome {
    pub(crate) tally: MfaTally,
    pub(crate) login_p50_ms: LoginTimes,
    pub(crate) checks: Vec<Check>,
}

/// p50 login times, ms.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct LoginTimes {
    pub(crate) password_only: f64,
    pub(crate) with_code: f64,
    pub(crate) with_recovery_code: f64,
}

impl MfaOutcome {
    pub(crate) fn as_expected(&self) -> bool {
        self.checks.iter().all(Check::as_expected)
    }
}

/// The failed logins one account may make per window (the server's
/// default, which the run keeps).
const PER_ACCOUNT: u64 = 5;

fn password(user: &str) -> String {
    format!("{user}-mfa-harness-password")
}

fn login(user: &str, code: Option<String>) -> Body {
    frame::Login {
        username: user.into(),
        password: password(user),
        device: 1,
        second_factor: code,
    }
    .into()
}

fn code(secret: &[u8], step: i64) -> String {
    format!("{:06}", mfa::totp(secret, step))
}

/// Sends a login on a fresh connection: its answer and how long it took.
async fn try_login(addr: SocketAddr, body: Body) -> Result<(Body, u64)> {
    let mut ws = connect(addr).await?;
    let started = Instant::now();
    let answer = ask(&mut ws, 1, body).await?;
    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    Ok((answer, took))
}

fn accepted(b: &Body) -> bool {
    matches!(b, Body::LoginOk(_))
}

fn refused_with(b: &Body, code: ErrorCode) -> bool {
    matches!(b, Body::Error(e) if e.code == code)
}

/// One user's enrolment: registered, logged in with the password alone,
/// TOTP on. Returns the secret, the confirming step and the recovery codes.
async fn enrol(
    addr: SocketAddr,
    user: &str,
    t: &mut MfaTally,
) -> Result<(Vec<u8>, i64, Vec<String>)> {
    let mut ws: Ws = connect(addr).await?;
    let reg = frame::Register {
        username: user.into(),
        password: password(user),
    };
    if !matches!(ask(&mut ws, 1, reg.into()).await?, Body::Ok(_)) {
        bail!("{user} could not register");
    }
    let started = Instant::now();
    let token = match ask(&mut ws, 2, login(user, None)).await? {
        Body::LoginOk(ok) => ok.token,
        other => bail!("{user}: login answered {}", other.name()),
    };
    t.password_only_us
        .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    if !matches!(
        ask(&mut ws, 3, frame::Authenticate { token }.into()).await?,
        Body::AuthOk(_)
    ) {
        bail!("{user} could not authenticate");
    }
    let secret = match ask(&mut ws, 4, frame::MfaSetup {}.into()).await? {
        Body::MfaSecret(s) => s.secret,
        other => bail!("{user}: MfaSetup answered {}", other.name()),
    };
    let step = mfa::current_step();
    let confirm = frame::MfaConfirm {
        code: code(&secret, step),
    };
    let recovery = match ask(&mut ws, 5, confirm.into()).await? {
        Body::MfaEnabled(e) => e.recovery_codes,
        other => bail!("{user}: MfaConfirm answered {}", other.name()),
    };
    Ok((secret, step, recovery))
}

/// An honest login: must get in; timed into `times`.
async fn honest(
    addr: SocketAddr,
    user: &str,
    code: String,
    times: &mut Vec<u64>,
    t: &mut MfaTally,
) -> Result<()> {
    let (answer, took) = try_login(addr, login(user, Some(code))).await?;
    if accepted(&answer) {
        times.push(took);
    } else {
        t.honest_refused += 1;
    }
    Ok(())
}

/// What the attacker presents to one account: each code the user used,
/// the confirming one, one out of the drift window, another user's.
async fn replay(addr: SocketAddr, user: &str, codes: Vec<String>, t: &mut MfaTally) -> Result<()> {
    for c in codes {
        let (answer, _) = try_login(addr, login(user, Some(c))).await?;
        t.replays += 1;
        t.replays_accepted += u64::from(accepted(&answer));
        t.replays_checked += u64::from(refused_with(&answer, ErrorCode::SecondFactorRequired));
    }
    Ok(())
}

/// Everything one user and the attacker do with the account: the user
/// enrols and logs in honestly; then the attacker replays codes (even
/// users) or guesses (odd users), each attack on accounts of its own so
/// that one attack's failed logins do not hide the other behind the
/// per-account limit.
async fn exercise(
    addr: SocketAddr,
    m: &Mfa,
    i: usize,
    other_secret: Option<&[u8]>,
    t: &mut MfaTally,
) -> Result<(Vec<u8>, Vec<String>)> {
    let user = format!("m{i}");
    let (secret, step, recovery) = enrol(addr, &user, t).await?;
    let mut used = vec![code(&secret, step + 1)];
    used.extend(recovery.iter().take(m.recovery_logins).cloned());
    let mut times = std::mem::take(&mut t.with_code_us);
    honest(addr, &user, used[0].clone(), &mut times, t).await?;
    t.with_code_us = times;
    let mut times = std::mem::take(&mut t.with_recovery_us);
    for c in used.iter().skip(1) {
        honest(addr, &user, c.clone(), &mut times, t).await?;
    }
    t.with_recovery_us = times;
    let (answer, _) = try_login(addr, login(&user, None)).await?;
    t.without_code += 1;
    t.without_code_accepted += u64::from(!refused_with(&answer, ErrorCode::SecondFactorRequired));
    if i.is_multiple_of(2) {
        used.push(code(&secret, step));
        used.push(code(&secret, step + 3));
        used.extend(other_secret.map(|s| code(s, mfa::current_step())));
        replay(addr, &user, used, t).await?;
    } else {
        guess(addr, m, &user, &secret, t).await?;
    }
    Ok((secret, recovery))
}

/// The attacker guesses: wrong codes in a row (never one of the window's
/// real ones).
async fn guess(
    addr: SocketAddr,
    m: &Mfa,
    user: &str,
    secret: &[u8],
    t: &mut MfaTally,
) -> Result<()> {
    let now = mfa::current_step();
    let real: Vec<u32> = (now - 2..=now + 2).map(|s| mfa::totp(secret, s)).collect();
    let mut checked = 0u64;
    let mut candidate = 0u32;
    for _ in 0..m.guesses {
        while real.contains(&candidate) {
            candidate += 1;
        }
        let (answer, _) = try_login(addr, login(user, Some(format!("{candidate:06}")))).await?;
        candidate += 1;
        t.guesses += 1;
        t.guesses_accepted += u64::from(accepted(&answer));
        if refused_with(&answer, ErrorCode::RateLimited) {
            t.guesses_rate_limited += 1;
        } else {
            checked += 1;
        }
    }
    t.most_guesses_checked = t.most_guesses_checked.max(checked);
    Ok(())
}

/// The p50 of `v` (µs) in ms.
fn p50_ms(v: &[u64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |x| *x as f64 / 1000.0)
}

/// Runs the scenario's second-factor run.
pub(crate) async fn run(s: &Scenario) -> Result<MfaOutcome> {
    let Some(m) = &s.mfa else {
        bail!("not a second-factor scenario");
    };
    let dir = tempfile::tempdir()?;
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("chatify.db"), Durability::Full)
            .context("opening the run's store")?,
    );
    let mut config = Config {
        login_failures_per_address: usize::MAX / 2,
        ..Config::default()
    };
    if !m.owasp_cost {
        config.password_cost = CHEAP_ARGON2;
    }
    let server = Server::start(config, store.clone()).await?;
    let addr = server.local_addr();
    let mut t = MfaTally {
        users: s.users.count,
        ..MfaTally::default()
    };
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut recovery = Vec::new();
    for i in 0..s.users.count {
        let (secret, codes) =
            exercise(addr, m, i, secrets.last().map(Vec::as_slice), &mut t).await?;
        secrets.push(secret);
        recovery.extend(codes);
    }
    server.shutdown().await;
    store.checkpoint()?;
    drop(store);
    t.recovery_codes = recovery.len();
    let (bytes, found) = search_store(dir.path(), &secrets, &recovery);
    t.store_bytes = bytes;
    t.store_found = found;
    let checks = checks(s, &t);
    Ok(MfaOutcome {
        login_p50_ms: LoginTimes {
            password_only: p50_ms(&t.password_only_us),
            with_code: p50_ms(&t.with_code_us),
            with_recovery_code: p50_ms(&t.with_recovery_us),
        },
        tally: t,
        checks,
    })
}

/// Every file of the store searched, as the credential tap searches a
/// server's memory, for each TOTP secret and its base32 and each recovery
/// code as shown and bare: the bytes searched and what was found.
fn search_store(dir: &Path, secrets: &[Vec<u8>], recovery: &[String]) -> (u64, Vec<String>) {
    let r = taps::scan_dir(dir, &secrets_detector(secrets, recovery));
    (r.bytes, r.hits.into_iter().map(|h| h.form).collect())
}

/// The run's secrets, labelled, in every encoding a canary is searched in.
fn secrets_detector(secrets: &[Vec<u8>], recovery: &[String]) -> Detector {
    let mut labelled: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        labelled.push((format!("user {i}'s secret"), s.clone()));
        labelled.push((
            format!("user {i}'s secret in base32"),
            mfa::base32(s).into_bytes(),
        ));
    }
    for (i, c) in recovery.iter().enumerate() {
        labelled.push((format!("recovery code {i}"), c.clone().into_bytes()));
        labelled.push((
            format!("recovery code {i} bare"),
            c.replace('-', "").into_bytes(),
        ));
    }
    Detector::secrets(labelled.iter().map(|(l, b)| (l.as_str(), b.as_slice())))
}

/// The run's checks, from what it saw.
pub(crate) fn checks(s: &Scenario, t: &MfaTally) -> Vec<Check> {
    let check = |name, ok, evidence| Check::judged(s, name, ok, evidence);
    vec![
        check(
            "mfa.code-required",
            t.without_code > 0 && t.without_code_accepted == 0,
            format!(
                "{} of {} logins with the right password and no code got in",
                t.without_code_accepted, t.without_code
            ),
        ),
        check(
            "mfa.honest-logins",
            t.honest_refused == 0 && !t.with_code_us.is_empty(),
            format!(
                "{} honest logins refused; {} with a fresh code and {} with a recovery code got in",
                t.honest_refused,
                t.with_code_us.len(),
                t.with_recovery_us.len()
            ),
        ),
        check(
            "mfa.codes-once",
            t.replays_checked > 0 && t.replays_accepted == 0,
            format!(
                "{} of {} replayed or out-of-reach codes got in ({} refused as wrong, the rest RateLimited unread)",
                t.replays_accepted, t.replays, t.replays_checked
            ),
        ),
        check(
            "mfa.guesses-limited",
            t.guesses > 0 && t.guesses_accepted == 0 && t.most_guesses_checked <= PER_ACCOUNT,
            format!(
                "{} of {} wrong codes got in; {} answered RateLimited unread; at most {} checked per account (limit {PER_ACCOUNT})",
                t.guesses_accepted, t.guesses, t.guesses_rate_limited, t.most_guesses_checked
            ),
        ),
        check(
            "leak.mfa-store",
            t.store_bytes > 0 && t.store_found.is_empty(),
            if t.store_found.is_empty() {
                format!(
                    "{} bytes of the store searched for {} TOTP secrets (and their base32) and {} recovery codes (as shown and bare), each in every encoding the credential tap searches: none found",
                    t.store_bytes, t.users, t.recovery_codes
                )
            } else {
                format!("found in the store: {}", t.store_found.join(", "))
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Verdict;

    fn scenario() -> Scenario {
        let text = "name = \"t\"\ndescription = \"t\"\n[users]\ncount = 2\n[workload]\nmessages = 1\nrate = 1.0\n[mfa]\n";
        toml::from_str(text).expect("a scenario")
    }

    fn honest() -> MfaTally {
        MfaTally {
            users: 2,
            with_code_us: vec![1, 2],
            without_code: 2,
            replays: 10,
            replays_checked: 8,
            guesses: 24,
            guesses_rate_limited: 14,
            most_guesses_checked: 5,
            store_bytes: 4096,
            ..MfaTally::default()
        }
    }

    fn failed(t: &MfaTally) -> Vec<&'static str> {
        checks(&scenario(), t)
            .into_iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn an_honest_run_passes() {
        assert_eq!(failed(&honest()), Vec::<&str>::new());
    }

    /// Each check fails on the server it is there to catch.
    #[test]
    fn each_check_catches_its_mutant() {
        type Mutant = (&'static str, fn(&mut MfaTally));
        let mutants: [Mutant; 6] = [
            ("mfa.code-required", |t| t.without_code_accepted = 1),
            ("mfa.codes-once", |t| t.replays_accepted = 1),
            ("mfa.guesses-limited", |t| t.guesses_accepted = 1),
            ("mfa.guesses-limited", |t| t.most_guesses_checked = 12),
            ("mfa.honest-logins", |t| t.honest_refused = 1),
            ("leak.mfa-store", |t| {
                t.store_found = vec!["user 0's secret (raw)".into()];
            }),
        ];
        for (name, mutate) in mutants {
            let mut t = honest();
            mutate(&mut t);
            assert_eq!(failed(&t), vec![name]);
        }
        // A run that tried nothing cannot pass.
        assert_eq!(
            failed(&MfaTally::default()),
            vec![
                "mfa.code-required",
                "mfa.honest-logins",
                "mfa.codes-once",
                "mfa.guesses-limited",
                "leak.mfa-store"
            ]
        );
    }

    #[test]
    fn the_store_search_finds_a_secret_in_either_form() {
        let secret = b"12345678901234567890".to_vec();
        let codes = vec!["ABCD-EFGH-IJKL-MNOP".to_owned()];
        let secrets = std::slice::from_ref(&secret);
        let dir = tempfile::tempdir().expect("a directory");
        let file = dir.path().join("store");
        std::fs::write(&file, b"some pages").expect("written");
        let (bytes, found) = search_store(dir.path(), secrets, &codes);
        assert_eq!((bytes, found.len()), (10, 0));
        let mut planted = b"some pages ".to_vec();
        planted.extend_from_slice(&secret);
        planted.extend_from_slice(b" and GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ and ABCDEFGHIJKLMNOP");
        std::fs::write(&file, &planted).expect("written");
        let (_, found) = search_store(dir.path(), secrets, &codes);
        for planted in [
            "user 0's secret/raw",
            "user 0's secret in base32/raw",
            "recovery code 0 bare/raw",
        ] {
            assert!(found.iter().any(|f| f == planted), "{planted}: {found:?}");
        }
        assert!(
            !found.iter().any(|f| f.starts_with("recovery code 0/")),
            "{found:?}"
        );
    }
}
