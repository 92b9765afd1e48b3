//! Plaintexts with canaries, and the search for them in what the server saw.
//!
//! Every plaintext is `m <sender> <n> <canary> <filler>`: a header the
//! recipient parses to check delivery, then a canary of 24 random printable
//! bytes (unique per message, ~150 bits, including `"` and `\` so that its
//! JSON-escaped form differs from its raw form), then random printable filler
//! up to the message's size.
//!
//! A [`Detector`] looks for every canary raw and in lower/upper hex, standard
//! and URL-safe base64 at all three alignments, JSON-escaped, and UTF-16 LE/BE;
//! and for every 16-byte window of every plaintext, raw.

use std::collections::HashSet;

use aho_corasick::AhoCorasick;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use rand::Rng;

/// Canary length in bytes.
pub(crate) const CANARY_LEN: usize = 24;

/// The smallest plaintext the harness generates (header + canary).
pub(crate) const MIN_SIZE: usize = 64;

/// Most 16-byte windows indexed; beyond, windows of later messages are
/// sampled (every message's canary is always searched in every encoding).
pub(crate) const MAX_WINDOWS: usize = 2_000_000;

/// One planned message's plaintext.
#[derive(Debug, Clone)]
pub(crate) struct Plaintext {
    pub(crate) bytes: Vec<u8>,
    pub(crate) canary: [u8; CANARY_LEN],
}

fn printable(rng: &mut impl Rng) -> u8 {
    // 0x21..=0x7e: printable ASCII without space.
    0x21 + (rng.next_u32() % 94) as u8
}

/// Builds the plaintext of message `n` from `sender`, `size` bytes long.
pub(crate) fn make(sender: usize, n: u64, size: usize, rng: &mut impl Rng) -> Plaintext {
    let mut canary = [0u8; CANARY_LEN];
    for b in &mut canary {
        *b = printable(rng);
    }
    let mut bytes = format!("m {sender} {n} ").into_bytes();
    bytes.extend_from_slice(&canary);
    bytes.push(b' ');
    while bytes.len() < size {
        bytes.push(printable(rng));
    }
    Plaintext { bytes, canary }
}

/// Parses `(sender, n)` from a received plaintext.
pub(crate) fn parse(bytes: &[u8]) -> Option<(usize, u64)> {
    let mut parts = bytes.splitn(4, |b| *b == b' ');
    if parts.next()? != b"m" {
        return None;
    }
    let sender = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let n = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((sender, n))
}

/// The forms in which a canary is searched, with their names.
pub(crate) fn encodings(canary: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![
        ("raw", canary.to_vec()),
        ("hex", chatify_proto::hex::lower(canary).into_bytes()),
        ("HEX", chatify_proto::hex::upper(canary).into_bytes()),
    ];
    for (name, engine) in [
        ("base64", &STANDARD_NO_PAD),
        ("base64url", &URL_SAFE_NO_PAD),
    ] {
        for align in 0..3usize {
            let mut shifted = vec![0u8; align];
            shifted.extend_from_slice(canary);
            let enc = engine.encode(&shifted);
            // Characters that depend on the canary alone: skip those mixing in
            // the prefix, and the last three, which depend on what follows.
            let start = (align * 8).div_ceil(6);
            if let Some(inner) = enc.as_bytes().get(start..enc.len().saturating_sub(3)) {
                out.push((name, inner.to_vec()));
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(canary)
        && let Ok(json) = serde_json::to_string(s)
    {
        let inner = json.trim_matches('"').as_bytes().to_vec();
        out.push(("json", inner));
    }
    out.push(("utf16le", canary.iter().flat_map(|b| [*b, 0]).collect()));
    out.push(("utf16be", canary.iter().flat_map(|b| [0, *b]).collect()));
    out
}

/// Where a needle was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Hit {
    /// Which tap region (file name, memory range, "wire").
    pub(crate) place: String,
    /// Byte offset in that region (or address for memory).
    pub(crate) offset: u64,
    /// What matched: `canary/<encoding>` or `window`.
    pub(crate) form: String,
}

/// Searches byte strings for the canaries and plaintext windows of a run.
pub(crate) struct Detector {
    automaton: Option<AhoCorasick>,
    forms: Vec<String>,
    windows: HashSet<[u8; 16]>,
}

impl Detector {
    /// Indexes every plaintext of the run.
    pub(crate) fn new<'a>(plaintexts: impl IntoIterator<Item = &'a Plaintext>) -> Self {
        let mut needles = Vec::new();
        let mut forms = Vec::new();
        let mut windows = HashSet::new();
        for p in plaintexts {
            for (form, needle) in encodings(&p.canary) {
                needles.push(needle);
                forms.push(format!("canary/{form}"));
            }
            if windows.len() < MAX_WINDOWS {
                for w in p.bytes.windows(16) {
                    if let Ok(w) = <[u8; 16]>::try_from(w) {
                        windows.insert(w);
                    }
                }
            }
        }
        Detector {
            automaton: AhoCorasick::new(&needles).ok(),
            forms,
            windows,
        }
    }

    /// Finds secrets (passwords, session tokens), each named by its label,
    /// in every encoding a canary is searched in; no plaintext windows.
    pub(crate) fn secrets<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut needles = Vec::new();
        let mut forms = Vec::new();
        for (label, secret) in secrets {
            for (form, needle) in encodings(secret) {
                needles.push(needle);
                forms.push(format!("{label}/{form}"));
            }
        }
        Detector {
            automaton: AhoCorasick::new(&needles).ok(),
            forms,
            windows: HashSet::new(),
        }
    }

    /// Every hit in `haystack` (at most `limit` reported), region named `place`,
    /// offsets counted from `base`.
    pub(crate) fn scan(
        &self,
        place: &str,
        base: u64,
        haystack: &[u8],
        limit: usize,
        hits: &mut Vec<Hit>,
        total: &mut u64,
    ) {
        if let Some(ac) = &self.automaton {
            for m in ac.find_overlapping_iter(haystack) {
                *total += 1;
                if hits.len() < limit {
                    hits.push(Hit {
                        place: place.to_owned(),
                        offset: base + m.start() as u64,
                        form: self
                            .forms
                            .get(m.pattern().as_usize())
                            .cloned()
                            .unwrap_or_default(),
                    });
                }
            }
        }
        if !self.windows.is_empty() {
            for (i, w) in haystack.windows(16).enumerate() {
                if let Ok(w) = <[u8; 16]>::try_from(w)
                    && self.windows.contains(&w)
                {
                    *total += 1;
                    if hits.len() < limit {
                        hits.push(Hit {
                            place: place.to_owned(),
                            offset: base + i as u64,
                            form: "window".into(),
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Plaintext {
        let mut rng = rand::rng();
        make(3, 17, 200, &mut rng)
    }

    #[test]
    fn round_trip_header() {
        let p = sample();
        assert_eq!(p.bytes.len(), 200);
        assert_eq!(parse(&p.bytes), Some((3, 17)));
        assert_eq!(parse(b"nonsense"), None);
    }

    /// Each encoding of a canary, embedded in noise, is found; unrelated noise is not.
    #[test]
    fn every_encoding_is_detected() {
        let p = sample();
        let d = Detector::new([&p]);
        let mut rng = rand::rng();
        let noise: Vec<u8> = (0..4096).map(|_| (rng.next_u32() & 0xff) as u8).collect();
        let (mut hits, mut total) = (Vec::new(), 0);
        d.scan("noise", 0, &noise, 10, &mut hits, &mut total);
        assert_eq!(total, 0, "{hits:?}");

        let mut forms = Vec::new();
        for (form, needle) in encodings(&p.canary) {
            let mut hay = noise.clone();
            hay.splice(1000..1000, needle.iter().copied());
            let (mut hits, mut total) = (Vec::new(), 0);
            d.scan("x", 0, &hay, 100, &mut hits, &mut total);
            assert!(
                hits.iter()
                    .any(|h| h.form == format!("canary/{form}") && h.offset == 1000),
                "{form}: {hits:?}"
            );
            forms.push(form);
        }
        for f in [
            "raw",
            "hex",
            "HEX",
            "base64",
            "base64url",
            "json",
            "utf16le",
            "utf16be",
        ] {
            assert!(forms.contains(&f), "{f}");
        }
        // Base64 at every alignment: the canary after 0, 1 and 2 other bytes.
        for prefix in 0..3 {
            let mut data = vec![b'x'; prefix];
            data.extend_from_slice(&p.canary);
            data.extend_from_slice(b"tail");
            let enc = STANDARD_NO_PAD.encode(&data);
            let (mut hits, mut total) = (Vec::new(), 0);
            d.scan("b64", 0, enc.as_bytes(), 10, &mut hits, &mut total);
            assert!(total > 0, "alignment {prefix} missed");
        }
        // A 16-byte window of the filler, alone.
        let window = &p.bytes[150..166];
        let (mut hits, mut total) = (Vec::new(), 0);
        d.scan("w", 0, window, 10, &mut hits, &mut total);
        assert_eq!(hits.first().map(|h| h.form.as_str()), Some("window"));
    }
}
