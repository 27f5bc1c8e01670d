//! The stable names of an AWS stage in Route 53, over the SDK: one change batch per
//! switch, `GetChange` until `INSYNC`, `ListResourceRecordSets` to read one record set.
//! Route 53 is global: its client is made for `us-east-1`, whatever the stage's region;
//! `AWS_ENDPOINT_URL` is honoured like everywhere else.

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};

use super::super::api::{ApiError, ApiResult, ErrorKind};
use super::super::dns::{Action, DnsApi, RecordKind, RecordSet};

pub struct Route53 {
    r53: aws_sdk_route53::Client,
}

impl Route53 {
    pub async fn new() -> Route53 {
        let config = super::Sdk::loader("us-east-1", super::ATTEMPT_TIMEOUT).load().await;
        Route53 { r53: aws_sdk_route53::Client::new(&config) }
    }
}

fn rr_type(kind: RecordKind) -> RrType {
    match kind {
        RecordKind::A => RrType::A,
        RecordKind::Cname => RrType::Cname,
        RecordKind::Txt => RrType::Txt,
    }
}

fn built<T>(r: Result<T, aws_sdk_route53::error::BuildError>) -> ApiResult<T> {
    r.map_err(|e| ApiError {
        code: None,
        message: format!("a Route 53 request could not be built: {e}"),
        kind: ErrorKind::Refused,
    })
}

/// Zone ids are accepted with or without the `/hostedzone/` the API sometimes adds.
fn zone_id(zone: &str) -> &str {
    zone.strip_prefix("/hostedzone/").unwrap_or(zone)
}

impl DnsApi for Route53 {
    async fn change(&self, zone: &str, changes: &[(Action, RecordSet)], comment: &str) -> ApiResult<String> {
        let mut batch = ChangeBatch::builder().comment(comment);
        for (action, set) in changes {
            let mut rrs = ResourceRecordSet::builder().name(&set.name).r#type(rr_type(set.kind)).ttl(set.ttl as i64);
            for v in &set.values {
                rrs = rrs.resource_records(built(ResourceRecord::builder().value(v).build())?);
            }
            let action = match action {
                Action::Upsert => ChangeAction::Upsert,
                Action::Delete => ChangeAction::Delete,
            };
            batch = batch
                .changes(built(Change::builder().action(action).resource_record_set(built(rrs.build())?).build())?);
        }
        let out = self
            .r53
            .change_resource_record_sets()
            .hosted_zone_id(zone_id(zone))
            .change_batch(built(batch.build())?)
            .send()
            .await
            .map_err(super::err)?;
        Ok(out.change_info().map(|c| c.id().to_string()).unwrap_or_default())
    }

    async fn in_sync(&self, change_id: &str) -> ApiResult<bool> {
        let id = change_id.strip_prefix("/change/").unwrap_or(change_id);
        let out = self.r53.get_change().id(id).send().await.map_err(super::err)?;
        Ok(out.change_info().is_some_and(|c| *c.status() == ChangeStatus::Insync))
    }

    async fn record(&self, zone: &str, name: &str, kind: RecordKind) -> ApiResult<Option<RecordSet>> {
        let out = self
            .r53
            .list_resource_record_sets()
            .hosted_zone_id(zone_id(zone))
            .start_record_name(name)
            .start_record_type(rr_type(kind))
            .max_items(1)
            .send()
            .await
            .map_err(super::err)?;
        // The listing starts at the name: the first set is it, or the next one.
        let found = out.resource_record_sets().iter().find(|s| {
            s.name().trim_end_matches('.').eq_ignore_ascii_case(name.trim_end_matches('.'))
                && *s.r#type() == rr_type(kind)
        });
        Ok(found.map(|s| RecordSet {
            name: s.name().to_string(),
            kind,
            ttl: s.ttl().unwrap_or(0).max(0) as u64,
            values: s.resource_records().iter().map(|r| r.value().to_string()).collect(),
        }))
    }

    async fn apex(&self, zone: &str) -> ApiResult<Option<String>> {
        // A listing starts at the zone's apex (its NS and SOA records).
        let out = self
            .r53
            .list_resource_record_sets()
            .hosted_zone_id(zone_id(zone))
            .max_items(10)
            .send()
            .await
            .map_err(super::err)?;
        Ok(out.resource_record_sets().iter().find(|s| *s.r#type() == RrType::Soa).map(|s| s.name().to_string()))
    }
}
