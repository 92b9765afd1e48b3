//! Second factor: TOTP (RFC 6238) and single-use recovery codes
//! (docs/PROTOCOL.md §9.5).
//!
//! ```text
//!  MfaSetup    ─▶ 20 random bytes ─▶ seal(server key, user) ─▶ store (pending)
//!                                   └▶ MfaSecret { secret, otpauth:// URI }
//!  MfaConfirm  ─▶ open ─▶ code of step t-1, t or t+1? ─▶ enable, last step = t'
//!                                   └▶ MfaEnabled { ten recovery codes } (stored as SHA-256)
//!  Login + code ─▶ password ─▶ open ─▶ code's step > last step? (atomic in the store)
//!               or recovery code's hash deleted? (once)
//! ```
//!
//! The secret is stored sealed with AES-256-GCM under a key of the
//! server's ([`MfaKey`], a file the operator keeps apart from the
//! database), bound to the user name, so that a copy of the database alone
//! does not yield any account's codes and one account's sealed secret does
//! not open as another's. The primitives are `ring`'s, which the server
//! links for TLS already; nothing here touches the message layer.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use ring::{aead, hmac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Bytes of a TOTP secret (160 bits, RFC 4226's recommended length).
pub const SECRET_LEN: usize = 20;
/// Seconds per TOTP step.
pub const STEP_SECS: u64 = 30;
/// Digits of a TOTP code.
pub const DIGITS: u32 = 6;
/// Steps either side of the current one whose codes are accepted (clock
/// drift between phone and server).
pub const DRIFT_STEPS: i64 = 1;
/// Recovery codes issued when MFA is turned on.
pub const RECOVERY_CODES: usize = 10;
/// The issuer shown by authenticator apps.
pub const ISSUER: &str = "Chatify";

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// The server's key for TOTP secrets at rest (32 bytes). Wiped when
/// dropped; never printed.
pub struct MfaKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MfaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaKey(..)")
    }
}

impl MfaKey {
    /// A fresh random key (a server whose key lives as long as its
    /// process: tests, an in-memory store).
    pub fn random() -> MfaKey {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(k.as_mut());
        MfaKey(k)
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MfaKey {
        MfaKey(Zeroizing::new(bytes))
    }

    /// Reads the key from `path`: 64 hexadecimal digits (`openssl rand -hex
    /// 32`), surrounding whitespace ignored.
    pub fn read(path: &Path) -> Result<MfaKey, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let bytes = Zeroizing::new(chatify_proto::hex::decode(text.trim()).unwrap_or_default());
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(format!(
                "{}: an MFA key is 64 hexadecimal digits (`openssl rand -hex 32`)",
                path.display()
            ));
        }
        key.copy_from_slice(&bytes);
        Ok(MfaKey(key))
    }

    /// Reads the key at `path`, or creates it there (mode 0600) when no
    /// file exists: a single node's default, beside its database.
    pub fn read_or_create(path: &Path) -> Result<MfaKey, String> {
        if path.exists() {
            return MfaKey::read(path);
        }
        let key = MfaKey::random();
        let mut hex = Zeroizing::new(chatify_proto::hex::lower(key.0.as_ref()));
        hex.push('\n');
        write_private(path, hex.as_bytes())
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(key)
    }

    fn aead(&self) -> Option<aead::LessSafeKey> {
        aead::UnboundKey::new(&aead::AES_256_GCM, self.0.as_ref())
            .ok()
            .map(aead::LessSafeKey::new)
    }

    /// `secret` sealed for `user`: version, nonce, ciphertext and tag.
    pub fn seal(&self, user: &str, secret: &[u8]) -> Option<Vec<u8>> {
        let key = self.aead()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut body = secret.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(seal_ad(user)),
            &mut body,
        )
        .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        body.zeroize();
        Some(out)
    }

    /// Opens what [`MfaKey::seal`] sealed for `user`; `None` for another
    /// user's, another key's, or a tampered one.
    pub fn open(&self, user: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (&version, rest) = sealed.split_first()?;
        if version != SEAL_VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = Zeroizing::new(body.to_vec());
        let n = self
            .aead()?
            .open_in_place(nonce, aead::Aad::from(seal_ad(user)), &mut body)
            .ok()?
            .len();
        body.truncate(n);
        Some(body)
    }
}

fn seal_ad(user: &str) -> Vec<u8> {
    let mut ad = b"chatify mfa secret v1\0".to_vec();
    ad.extend_from_slice(user.as_bytes());
    ad
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// A fresh TOTP secret.
pub fn new_secret() -> Zeroizing<[u8; SECRET_LEN]> {
    let mut s = Zeroizing::new([0u8; SECRET_LEN]);
    rand::rng().fill_bytes(s.as_mut());
    s
}

/// The TOTP step of `unix_secs`.
pub fn step_at(unix_secs: u64) -> i64 {
    i64::try_from(unix_secs / STEP_SECS).unwrap_or(i64::MAX)
}

/// The current TOTP step.
pub fn current_step() -> i64 {
    step_at(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// HOTP (RFC 4226) of `secret` at `counter`, `digits` long, with HMAC-SHA1
/// (what authenticator apps compute for an otpauth:// URI without an
/// algorithm).
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = mac
        .get(offset..offset + 4)
        .and_then(|w| <[u8; 4]>::try_from(w).ok())
        .map_or(0, u32::from_be_bytes)
        & 0x7fff_ffff;
    word % 10u32.pow(digits)
}

/// The six-digit TOTP code of `secret` at `step`.
pub fn totp(secret: &[u8], step: i64) -> u32 {
    hotp(secret, u64::try_from(step).unwrap_or(0), DIGITS)
}

/// The step within [`DRIFT_STEPS`] of `now_step` whose code is `code`
/// (six digits, spaces ignored), if any. Every candidate is computed and
/// compared, so the time taken does not depend on which one matched.
pub fn verify_totp(secret: &[u8], code: &str, now_step: i64) -> Option<i64> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() != DIGITS as usize || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let wanted: u32 = digits.parse().ok()?;
    let mut found = None;
    for step in now_step - DRIFT_STEPS..=now_step + DRIFT_STEPS {
        let hit = totp(secret, step) ^ wanted == 0;
        if hit && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// RFC 4648 base32 without padding (what otpauth:// URIs carry).
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let letter = |v: u32| char::from(ALPHABET.get((v & 31) as usize).copied().unwrap_or(b'A'));
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(letter(buffer >> bits));
        }
    }
    if bits > 0 {
        out.push(letter(buffer << (5 - bits)));
    }
    out
}

/// The otpauth:// URI an authenticator app enrols from (the Key URI Format
/// of Google Authenticator, which the others follow).
pub fn otpauth_uri(user: &str, secret: &[u8]) -> String {
    let label: String = format!("{ISSUER}:{user}")
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    format!(
        "otpauth://totp/{label}?secret={}&issuer={ISSUER}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        base32(secret)
    )
}

/// Ten fresh recovery codes, each 80 random bits written as four groups
/// of four base32 letters (`ABCD-EFGH-IJKL-MNOP`).
pub fn new_recovery_codes() -> Vec<Zeroizing<String>> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut raw = Zeroizing::new([0u8; 10]);
            rand::rng().fill_bytes(raw.as_mut());
            let plain = Zeroizing::new(base32(raw.as_ref()));
            let mut code = Zeroizing::new(String::with_capacity(19));
            for (i, c) in plain.chars().enumerate() {
                if i > 0 && i % 4 == 0 {
                    code.push('-');
                }
                code.push(c);
            }
            code
        })
        .collect()
}

/// How a recovery code is stored: SHA-256 over the user and the code
/// without its dashes, spaces or case. A code carries 80 random bits, so a
/// fast hash suffices (as for session tokens); attempts are rate-limited.
pub fn recovery_hash(user: &str, code: &str) -> Option<[u8; 32]> {
    let normal: Zeroizing<String> = Zeroizing::new(
        code.chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    );
    if normal.len() != 16
        || !normal
            .bytes()
            .all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7'))
    {
        return None;
    }
    let mut h = Sha256::new();
    h.update(b"chatify recovery code v1\0");
    h.update(user.as_bytes());
    h.update(b"\0");
    h.update(normal.as_bytes());
    Some(h.finalize().into())
}

/// Whether `code` looks like a TOTP code (digits) rather than a recovery
/// code.
pub fn is_totp_code(code: &str) -> bool {
    code.chars()
        .filter(|c| !c.is_whitespace())
        .all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (the eight-digit codes).
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(hotp(secret, time / STEP_SECS, 8), code, "T = {time}");
        }
        // Six digits are the low six of the same number.
        assert_eq!(totp(secret, step_at(59)), 287_082);
    }

    #[test]
    fn rfc4648_base32() {
        for (input, out) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), out);
        }
    }

    #[test]
    fn codes_within_the_drift_window_only() {
        let secret = [7u8; SECRET_LEN];
        let now = 1_000_000;
        for d in -DRIFT_STEPS..=DRIFT_STEPS {
            let code = format!("{:06}", totp(&secret, now + d));
            assert_eq!(verify_totp(&secret, &code, now), Some(now + d));
        }
        for far in [now - 2, now + 2, now - 100] {
            let code = format!("{:06}", totp(&secret, far));
            if (-1..=1).all(|d| totp(&secret, now + d) != totp(&secret, far)) {
                assert_eq!(verify_totp(&secret, &code, now), None);
            }
        }
        assert_eq!(verify_totp(&secret, "12345", now), None);
        assert_eq!(verify_totp(&secret, "12a456", now), None);
        let spaced = format!(
            "{:03} {:03}",
            totp(&secret, now) / 1000,
            totp(&secret, now) % 1000
        );
        assert_eq!(verify_totp(&secret, &spaced, now), Some(now));
    }

    #[test]
    fn sealed_secrets_open_for_their_user_and_key_only() {
        let key = MfaKey::random();
        let sealed = key.seal("alice", b"the secret").unwrap();
        assert_eq!(&key.open("alice", &sealed).unwrap()[..], b"the secret");
        assert!(key.open("bob", &sealed).is_none(), "bound to the user");
        assert!(MfaKey::random().open("alice", &sealed).is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(key.open("alice", &bad).is_none(), "byte {i} flipped");
        }
        assert!(key.open("alice", &sealed[..sealed.len() - 1]).is_none());
        assert!(
            !sealed.windows(10).any(|w| w == b"the secret"),
            "sealed, not copied"
        );
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/mfa.key");
        let a = MfaKey::read_or_create(&path).unwrap();
        let b = MfaKey::read_or_create(&path).unwrap();
        assert_eq!(*a.0, *b.0, "created once, then read");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "abcd").unwrap();
        let e = MfaKey::read(&path).unwrap_err();
        assert!(e.contains("64 hexadecimal digits"), "{e}");
        assert_eq!(format!("{a:?}"), "MfaKey(..)");
    }

    #[test]
    fn recovery_codes_are_random_and_normalised() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let first = &codes[0];
        assert_eq!(first.len(), 19);
        assert_eq!(first.matches('-').count(), 3);
        let h = recovery_hash("alice", first).unwrap();
        assert_eq!(
            recovery_hash("alice", &first.to_lowercase().replace('-', " ")),
            Some(h)
        );
        assert_ne!(recovery_hash("bob", first), Some(h), "bound to the user");
        let distinct: std::collections::HashSet<_> = codes.iter().map(|c| c.to_string()).collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        assert_eq!(recovery_hash("alice", "123456"), None);
        assert!(is_totp_code("123 456") && !is_totp_code(first));
    }

    #[test]
    fn uri_names_issuer_user_and_secret() {
        let uri = otpauth_uri("al ice", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Chatify:al%20ice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Chatify&algorithm=SHA1&digits=6&period=30"
        );
    }
}
