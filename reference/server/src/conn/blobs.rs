//! The blob requests (PROTOCOL §15): encrypted files, stored in parts,
//! opaque to the server. Each request moves at most one part.

use std::sync::Arc;
use std::time::Duration;

use chatify_proto::frame::{self, Address};
use chatify_proto::{Body, ErrorCode};
use rand::Rng;

use super::{Reply, blocking, now_ms};
use crate::Shared;
use crate::store::{BlobExpiry, BlobGrantOutcome, BlobInfo, BlobPutOutcome};

const NOT_FOUND: (ErrorCode, &str) = (
    ErrorCode::NotFound,
    "no such file on the server, or not yours to read",
);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn state(blob: frame::BlobId, info: BlobInfo) -> Body {
    frame::BlobState {
        blob,
        size: info.size,
        received: info.received,
    }
    .into()
}

/// Answers a blob request from the authenticated device `me`.
pub(super) async fn request(shared: &Arc<Shared>, me: Address, body: Body) -> Reply {
    match body {
        Body::BlobCreate(c) => create(shared, me, c.size).await,
        Body::BlobPut(p) => put(shared, me, p).await,
        Body::BlobStatus(b) => {
            let id = b.blob;
            blocking(shared, move |s| s.blobs().blob_state(&me, &id))
                .await
                .and_then(|i| i.ok_or(NOT_FOUND))
                .map(|info| state(b.blob, info))
        }
        Body::BlobGrant(g) => {
            let id = g.blob;
            match blocking(shared, move |s| s.blobs().blob_grant(&me, &id, &g.to)).await {
                Ok(BlobGrantOutcome::Granted) => Ok(frame::Ok {}.into()),
                Ok(BlobGrantOutcome::Incomplete) => Err((
                    ErrorCode::InvalidRequest,
                    "the file's upload is not complete",
                )),
                Ok(BlobGrantOutcome::NotFound) => Err(NOT_FOUND),
                Err(e) => Err(e),
            }
        }
        Body::BlobGet(g) => {
            let id = g.blob;
            blocking(shared, move |s| s.blobs().blob_part(&me, &id, g.part))
                .await
                .and_then(|d| d.ok_or(NOT_FOUND))
                .map(|data| {
                    frame::BlobPart {
                        blob: g.blob,
                        part: g.part,
                        data,
                    }
                    .into()
                })
        }
        Body::BlobRelease(r) => blocking(shared, move |s| s.blobs().blob_release(&me, &r.blob))
            .await
            .and_then(|held| {
                if held {
                    Ok(frame::Ok {}.into())
                } else {
                    Err(NOT_FOUND)
                }
            }),
        _ => Err((ErrorCode::InvalidRequest, "not a blob request")),
    }
}

async fn create(shared: &Arc<Shared>, me: Address, size: u64) -> Reply {
    let config = &shared.config;
    if size == 0 {
        return Err((ErrorCode::InvalidRequest, "a blob has at least one byte"));
    }
    if size > config.max_blob_size {
        return Err((
            ErrorCode::TooLarge,
            "the file is larger than this server accepts",
        ));
    }
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    let quota = config.blob_quota;
    let expires = now_ms().saturating_add(millis(config.blob_idle_timeout));
    let fits = blocking(shared, move |s| {
        s.blobs().blob_create(&me, &id, size, quota, expires)
    })
    .await?;
    if !fits {
        return Err((
            ErrorCode::QuotaExceeded,
            "the account's files on the server would pass its quota; \
             they are freed as recipients fetch them",
        ));
    }
    Ok(state(id, BlobInfo { size, received: 0 }))
}

async fn put(shared: &Arc<Shared>, me: Address, p: frame::BlobPut) -> Reply {
    let now = now_ms();
    let expiry = BlobExpiry {
        idle_ms: now.saturating_add(millis(shared.config.blob_idle_timeout)),
        complete_ms: now.saturating_add(millis(shared.config.history_retention)),
    };
    let id = p.blob;
    match blocking(shared, move |s| {
        s.blobs().blob_put(&me, &id, p.part, &p.data, expiry)
    })
    .await?
    {
        BlobPutOutcome::Stored(info) => Ok(state(id, info)),
        BlobPutOutcome::Refused(_) => Err((
            ErrorCode::InvalidRequest,
            "not the next part of the file, or not that part's length (BlobStatus tells which)",
        )),
        BlobPutOutcome::NotFound => Err(NOT_FOUND),
    }
}
