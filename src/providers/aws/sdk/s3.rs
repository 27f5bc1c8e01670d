//! The shared state store on S3 (`s3://BUCKET/PREFIX`), over the SDK.
//!
//! Credentials come from the standard chain, the region from `AWS_REGION` (else
//! `us-east-1`); `AWS_ENDPOINT_URL` is honoured, and with it path-style addressing
//! (an emulator on 127.0.0.1 has no bucket subdomains). Conditional writes are S3's own:
//! `If-None-Match: *` and `If-Match` on `PutObject`, `If-Match` on `DeleteObject`.
//! Like the EC2 and RDS calls, each call is one attempt: sending again is the store
//! layer's decision ([`crate::engine::store::put_checked`]), made with what it knows.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use super::super::api::ErrorKind;
use crate::engine::store::{
    listing_too_long, object_cap, too_large, Condition, Etag, Object, ObjectStore, StoreError, StoreFuture, MAX_KEYS,
};

pub struct S3Store {
    s3: aws_sdk_s3::Client,
    bucket: String,
    /// Ends with `/`, or is empty.
    prefix: String,
}

impl S3Store {
    /// A store in `bucket` under `prefix`.
    pub async fn new(bucket: &str, prefix: &str) -> S3Store {
        // The environment's region, else us-east-1: never a lookup in the instance
        // metadata service, which off EC2 only times out.
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
            .unwrap_or_else(|| "us-east-1".into());
        let config = super::Sdk::loader(&region, super::ATTEMPT_TIMEOUT).load().await;
        let endpoint_set =
            ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"].iter().any(|v| std::env::var(v).is_ok_and(|u| !u.is_empty()));
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config).force_path_style(endpoint_set).build(),
        );
        let prefix = prefix.trim_matches('/');
        S3Store {
            s3,
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// An SDK failure as the store sees it.
fn store_err<E>(e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let api = super::err(e);
    match (api.code.as_deref(), status) {
        (Some("PreconditionFailed"), _) | (_, Some(412)) => StoreError::PreconditionFailed,
        (Some("ConditionalRequestConflict"), _) | (_, Some(409)) => StoreError::Conflict,
        _ => match api.kind {
            ErrorKind::Unreachable | ErrorKind::ServerError | ErrorKind::Throttled => {
                StoreError::Unavailable(api.to_string())
            }
            ErrorKind::Denied => StoreError::Denied(api.to_string()),
            _ => StoreError::Failed(api.to_string()),
        },
    }
}

fn is_no_such_key<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.code() == Some("NoSuchKey")
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404 && e.code() != Some("NoSuchBucket"))
}

impl ObjectStore for S3Store {
    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Object>> {
        Box::pin(async move {
            let out = match self.s3.get_object().bucket(&self.bucket).key(self.key(key)).send().await {
                Ok(o) => o,
                Err(e) if is_no_such_key(&e) => return Ok(None),
                Err(e) => return Err(store_err(e)),
            };
            let etag = Etag(out.e_tag().unwrap_or_default().to_string());
            // Refused by its announced length, and again while it streams in: never
            // more than the cap in memory.
            let cap = object_cap(key);
            if out.content_length().is_some_and(|n| u64::try_from(n).unwrap_or(u64::MAX) > cap) {
                return Err(too_large(key));
            }
            let mut stream = out.body;
            let mut body = Vec::new();
            while let Some(chunk) = stream.try_next().await.map_err(|e| StoreError::Unavailable(e.to_string()))? {
                if (body.len() + chunk.len()) as u64 > cap {
                    return Err(too_large(key));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some(Object { body, etag }))
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>, cond: Condition) -> StoreFuture<'a, Etag> {
        Box::pin(async move {
            let req = self.s3.put_object().bucket(&self.bucket).key(self.key(key)).body(ByteStream::from(body));
            let matching = matches!(cond, Condition::Matches(_));
            let req = match cond {
                Condition::Always => req,
                Condition::Absent => req.if_none_match("*"),
                Condition::Matches(etag) => req.if_match(etag.0),
            };
            let out = match req.send().await {
                Ok(o) => o,
                // `If-Match` on an object that is gone: the version is not there.
                Err(e) if matching && is_no_such_key(&e) => return Err(StoreError::PreconditionFailed),
                Err(e) => return Err(store_err(e)),
            };
            Ok(Etag(out.e_tag().unwrap_or_default().to_string()))
        })
    }

    fn delete<'a>(&'a self, key: &'a str, if_match: Option<Etag>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let req = self.s3.delete_object().bucket(&self.bucket).key(self.key(key));
            let req = match if_match {
                Some(etag) => req.if_match(etag.0),
                None => req,
            };
            match req.send().await {
                Ok(_) => Ok(()),
                Err(e) if is_no_such_key(&e) => Ok(()),
                Err(e) => Err(store_err(e)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { self.listing(prefix, false).await })
    }

    fn list_dirs<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { self.listing(prefix, true).await })
    }
}

impl S3Store {
    async fn listing(&self, prefix: &str, dirs: bool) -> Result<Vec<String>, StoreError> {
        let full = self.key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.s3.list_objects_v2().bucket(&self.bucket).prefix(&full);
            if dirs {
                req = req.delimiter("/");
            }
            if let Some(t) = token.take() {
                req = req.continuation_token(t);
            }
            let page = req.send().await.map_err(store_err)?;
            if dirs {
                out.extend(
                    page.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix())
                        .filter_map(|p| p.strip_prefix(full.as_str()).map(|n| n.trim_end_matches('/').to_string())),
                );
            } else {
                out.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .filter_map(|k| k.strip_prefix(full.as_str()))
                        .map(str::to_string),
                );
            }
            if out.len() > MAX_KEYS {
                return Err(listing_too_long(prefix));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Release artifacts, read with the identity rehearse runs as.
impl crate::providers::aws::api::S3Api for super::Sdk {
    async fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        expires_in: std::time::Duration,
    ) -> crate::providers::aws::api::ApiResult<String> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in).map_err(|e| {
            crate::providers::aws::api::ApiError {
                code: None,
                message: format!("cannot presign s3://{bucket}/{key} for {expires_in:?}: {e}"),
                kind: ErrorKind::Refused,
            }
        })?;
        let req = self.s3.get_object().bucket(bucket).key(key).presigned(config).await.map_err(super::err)?;
        Ok(req.uri().to_string())
    }

    async fn download(
        &self,
        bucket: &str,
        key: &str,
        dest: &std::path::Path,
    ) -> crate::providers::aws::api::ApiResult<u64> {
        use tokio::io::AsyncWriteExt;
        let io = |e: std::io::Error| crate::providers::aws::api::ApiError {
            code: None,
            message: format!("cannot write {}: {e}", dest.display()),
            kind: ErrorKind::Refused,
        };
        let out = self.s3.get_object().bucket(bucket).key(key).send().await.map_err(super::err)?;
        let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(dest).await.map_err(io)?;
        let mut body = out.body;
        let mut size = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| crate::providers::aws::api::ApiError {
            code: None,
            message: format!("reading s3://{bucket}/{key} failed: {e}"),
            kind: ErrorKind::Unreachable,
        })? {
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        Ok(size)
    }

    async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> crate::providers::aws::api::ApiResult<()> {
        self.s3.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send().await.map_err(super::err)?;
        Ok(())
    }

    async fn get_object(&self, bucket: &str, key: &str) -> crate::providers::aws::api::ApiResult<Option<Vec<u8>>> {
        match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => {
                let bytes = out.body.collect().await.map_err(|e| crate::providers::aws::api::ApiError {
                    code: None,
                    message: format!("reading s3://{bucket}/{key} failed: {e}"),
                    kind: ErrorKind::Unreachable,
                })?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if is_no_such_key(&e) => Ok(None),
            Err(e) => Err(super::err(e)),
        }
    }

    async fn get_object_tail(
        &self,
        bucket: &str,
        key: &str,
        max: u64,
    ) -> crate::providers::aws::api::ApiResult<Option<(Vec<u8>, bool)>> {
        match self.s3.get_object().bucket(bucket).key(key).range(format!("bytes=-{max}")).send().await {
            Ok(out) => {
                // `bytes START-END/TOTAL`: the start was left out when TOTAL is more.
                let total = out.content_range().and_then(|r| r.rsplit('/').next()?.parse::<u64>().ok());
                let bytes = out.body.collect().await.map_err(|e| crate::providers::aws::api::ApiError {
                    code: None,
                    message: format!("reading s3://{bucket}/{key} failed: {e}"),
                    kind: ErrorKind::Unreachable,
                })?;
                let bytes = bytes.into_bytes().to_vec();
                let cut = total.is_some_and(|t| t > bytes.len() as u64);
                Ok(Some((bytes, cut)))
            }
            Err(e) if is_no_such_key(&e) => Ok(None),
            Err(e) => Err(super::err(e)),
        }
    }

    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> crate::providers::aws::api::ApiResult<u64> {
        let mut keys = Vec::new();
        let mut pages = self.s3.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(super::err)?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        for key in &keys {
            self.s3.delete_object().bucket(bucket).key(key).send().await.map_err(super::err)?;
        }
        Ok(keys.len() as u64)
    }
}
