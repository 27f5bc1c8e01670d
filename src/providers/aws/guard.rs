//! The ownership guard every mutating call passes, and the evidence `sweep` and `down`
//! want before they remove something found only by its tags.

use super::*;

/// The single gate every mutating call passes: the resource must carry this run's id.
#[derive(Clone, Debug)]
pub struct Guard {
    pub run_id: String,
}

/// Why the guard refused a change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("refusing to change {what} {id}: it belongs to rehearse run {owner}, not {run_id}")]
    OtherRun { what: String, id: String, owner: String, run_id: String },
    #[error(
        "refusing to change {what} {id}: it does not carry the tag {TAG_RUN}={run_id} (production is never changed)"
    )]
    Untagged { what: String, id: String, run_id: String },
}

impl Guard {
    pub fn check(&self, what: &str, id: &str, tags: &[Tag]) -> Result<(), Refused> {
        let (what, id, run_id) = (what.to_string(), id.to_string(), self.run_id.clone());
        match tag_value(tags, TAG_RUN) {
            Some(v) if v == self.run_id => Ok(()),
            Some(v) => Err(Refused::OtherRun { what, id, owner: v.to_string(), run_id }),
            None => Err(Refused::Untagged { what, id, run_id }),
        }
    }
}

impl From<Refused> for DestroyError {
    fn from(e: Refused) -> Self {
        DestroyError::caused(DestroyErrorKind::NotOurs, e.to_string(), e)
    }
}

/// A resource found by its rehearse tags (for `down` without a journal, and `sweep`).
#[derive(Clone, Debug)]
pub struct Tagged {
    /// What it is, which decides the teardown order.
    pub kind: Kind,
    pub id: String,
    /// The name it was created under: a group's name, an RDS identifier, an
    /// instance's client token (empty when it has none).
    pub name: String,
    /// Deletion protection is on (RDS).
    pub protected: bool,
    /// Its ARN (RDS resources: what tags are set on).
    pub arn: Option<String>,
    pub tags: Vec<Tag>,
}

/// Why a tagged resource is not taken for rehearse's own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Doubt {
    #[error("its tags {TAG_RUN}={run:?} / {TAG_RESOURCE}={resource:?} are not rehearse's")]
    Tags { run: String, resource: String },
    #[error("deletion protection is on (rehearse never leaves a copy protected)")]
    Protected,
    #[error("rehearse does not make a {0}")]
    Kind(Kind),
    #[error("its name {name:?} is not the one rehearse gives it ({expected:?})")]
    Name { name: String, expected: String },
}

impl Tagged {
    /// Evidence that rehearse made this, beyond tags anyone with tagging rights could
    /// set: the run id in the tags has rehearse's shape, and the resource's name is the
    /// one rehearse derives from that run id and the tagged plan id (its security group
    /// and subnet group name, its RDS identifier, its instances' client token). And
    /// deletion protection is off: rehearse never leaves a copy protected.
    pub fn evidence(&self) -> Result<(), Doubt> {
        let run = tag_value(&self.tags, TAG_RUN).unwrap_or_default();
        let res = tag_value(&self.tags, TAG_RESOURCE).unwrap_or_default();
        if !crate::sys::state::valid_run_id(run) || res.is_empty() {
            return Err(Doubt::Tags { run: run.to_string(), resource: res.to_string() });
        }
        if self.protected {
            return Err(Doubt::Protected);
        }
        type P = AwsProvider<()>;
        let expected = match self.kind {
            Kind::AwsInstance => P::client_token(run, res),
            Kind::AwsDbInstance => P::rds_id(run, res.strip_prefix("database.").unwrap_or(res)),
            Kind::AwsDbCluster => {
                let name = res.strip_prefix("database.").and_then(|r| r.strip_suffix(".cluster")).unwrap_or(res);
                P::rds_id(run, &format!("{name}-cluster"))
            }
            Kind::AwsDbSubnetGroup | Kind::AwsSecurityGroup => P::group_name(run),
            other => return Err(Doubt::Kind(other)),
        };
        // A pool member claimed by a run keeps the name its member's id gave it.
        let pooled = tag_value(&self.tags, crate::engine::pool::TAG_POOL).is_some();
        let member = tag_value(&self.tags, crate::engine::pool::TAG_MEMBER)
            .filter(|m| pooled && *m != run && crate::sys::state::valid_run_id(m) && self.kind == Kind::AwsDbInstance)
            .map(|m| P::rds_id(m, res.strip_prefix("database.").unwrap_or(res)));
        if self.name == expected || member.as_deref() == Some(self.name.as_str()) {
            Ok(())
        } else {
            Err(Doubt::Name { name: self.name.clone(), expected })
        }
    }
}

/// What rehearse demonstrably made (see [`Tagged::evidence`]), and the rest with why
/// it is left alone: a tag alone is something anyone with tagging rights could set.
pub fn by_evidence(tagged: Vec<Tagged>) -> (Vec<Tagged>, Vec<(Tagged, Doubt)>) {
    let (mut made, mut doubtful) = (Vec::new(), Vec::new());
    for t in tagged {
        match t.evidence() {
            Ok(()) => made.push(t),
            Err(why) => doubtful.push((t, why)),
        }
    }
    (made, doubtful)
}
