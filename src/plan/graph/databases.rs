//! The databases' copies (an RDS instance, an Aurora clone, or a local cluster), the
//! ingress rule of their ports and their masking (aws).

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::super::price;
use super::{Builder, Kind, PlanError, ProductionSource, Resource, DB_INGRESS};
use crate::description::{
    format_duration, AwsDatabase, Database, DatabaseSource, DatabaseTarget, ProviderKind, RestoreMode, Target,
};

impl Builder<'_> {
    pub(super) fn databases(&mut self) -> Result<(), PlanError> {
        let d = self.desc();
        for (name, db) in &d.databases {
            let attrs = self.database_attributes(name, db)?;
            let source = Some(self.production_source(db));
            match (&d.target, &db.target) {
                (Target::Aws(aws), DatabaseTarget::Aws(rds)) => {
                    self.aws_database(name, db, rds, &aws.region, attrs, source)
                }
                _ => self.local_database(name, attrs, source),
            }
            self.db_ids.insert(name, vec![format!("database.{name}")]);
        }
        Ok(())
    }

    /// What a copy is restored from: read, never changed.
    fn production_source(&self, db: &Database) -> ProductionSource {
        ProductionSource {
            kind: db.source.key().to_string(),
            identifier: match &db.source {
                DatabaseSource::RdsInstance(s) | DatabaseSource::AuroraCluster(s) => s.clone(),
                DatabaseSource::BackupDir(p) => self.loaded.resolve(p).display().to_string(),
                DatabaseSource::Url(u) => crate::description::redact_url(u),
            },
            restore: db.restore.as_str().to_string(),
            backup: None,
        }
    }

    /// The attributes every provider's copy shows.
    fn database_attributes(&self, name: &str, db: &Database) -> Result<Map<String, Value>, PlanError> {
        let db_name = self.render_static(&format!("databases.{name}.name"))?;
        let timeout = db.timeout.unwrap_or(match self.desc().provider() {
            ProviderKind::Aws => Duration::from_secs(30 * 60),
            ProviderKind::Local => Duration::from_secs(10 * 60),
        });
        let mut attrs = Map::new();
        attrs.insert("engine".into(), json!("postgres"));
        attrs.insert("database_name".into(), json!(db_name));
        attrs.insert("restore".into(), json!(db.restore.as_str()));
        attrs.insert("timeout".into(), json!(format_duration(timeout)));
        if let Some(m) = &db.masking {
            attrs.insert("masking".into(), json!(self.loaded.resolve(m).display().to_string()));
        }
        Ok(attrs)
    }

    /// An RDS instance, restored from a backup or (`aurora-clone`) in a copy-on-write
    /// clone of the production cluster.
    fn aws_database(
        &mut self,
        name: &str,
        db: &Database,
        rds: &AwsDatabase,
        region: &str,
        mut attrs: Map<String, Value>,
        source: Option<ProductionSource>,
    ) {
        let class = &rds.instance_class;
        attrs.insert("instance_class".into(), json!(class));
        attrs.insert("publicly_accessible".into(), json!(false));
        attrs.insert("deletion_protection".into(), json!(false));
        attrs.insert("skip_final_snapshot".into(), json!(true));
        attrs.insert("master_password".into(), json!("(generated at run, never printed)"));
        let cost = price::rds_hourly(class, region);
        let mut inst = Resource::new(format!("database.{name}"), Kind::AwsDbInstance, name);
        if db.restore == RestoreMode::AuroraClone {
            let cluster_id = format!("database.{name}.cluster");
            let mut cluster = Resource::new(cluster_id.clone(), Kind::AwsDbCluster, name);
            cluster.depends_on = self.network_ids.clone();
            cluster.source = source;
            cluster.attributes.insert("restore_type".into(), json!("copy-on-write"));
            cluster.attributes.insert("deletion_protection".into(), json!(false));
            cluster.attributes.insert("skip_final_snapshot".into(), json!(true));
            self.resources.push(cluster);
            inst.depends_on = vec![cluster_id];
            inst.depends_on.extend(self.network_ids.iter().cloned());
        } else {
            inst.depends_on = self.network_ids.clone();
            inst.source = source;
        }
        inst.attributes = attrs;
        inst.cost_per_hour_usd = cost;
        self.resources.push(inst);
    }

    /// A PostgreSQL cluster on this machine, masked inside its restore.
    fn local_database(&mut self, name: &str, mut attrs: Map<String, Value>, source: Option<ProductionSource>) {
        let mut pg = Resource::new(format!("database.{name}"), Kind::LocalPostgres, name);
        pg.source = source;
        attrs.insert("listen".into(), json!("127.0.0.1 and a unix socket in the run directory"));
        attrs.insert("password".into(), json!("(generated at run, never printed)"));
        pg.attributes = attrs;
        self.resources.push(pg);
    }

    /// On AWS the run's group opens only TCP, only to what is needed, and the copies'
    /// port only once every copy has the run's own password: before that, a copy still
    /// has production's master password. A copy is masked once its port is open (from
    /// here or the runner), and whatever uses the copy waits for the masking.
    pub(super) fn database_ingress_and_masking(&mut self) {
        let d = self.desc();
        let Some(from) = self.ingress_from().filter(|_| !d.databases.is_empty()) else { return };
        let mut r = Resource::new(DB_INGRESS, Kind::AwsIngress, "databases");
        r.depends_on = vec!["network.security-group".into()];
        r.depends_on.extend(self.db_ids.values().flatten().cloned());
        r.attributes.insert("protocol".into(), json!("tcp"));
        r.attributes.insert("ports".into(), json!("each copy's port, once its password is rotated"));
        r.attributes.insert("from".into(), json!(from));
        self.resources.push(r);
        self.db_ingress = Some(DB_INGRESS.to_string());

        for (name, db) in d.databases.iter().filter(|(_, db)| db.masking.is_some()) {
            let id = format!("mask.{name}");
            let mut m = Resource::new(id.clone(), Kind::Mask, name);
            m.depends_on = vec![format!("database.{name}"), DB_INGRESS.to_string()];
            m.depends_on.extend(self.runner.iter().cloned());
            if let Some(sql) = &db.masking {
                m.attributes.insert("sql".into(), json!(self.loaded.resolve(sql).display().to_string()));
            }
            m.attributes.insert("on".into(), json!(format!("{}, in one transaction", self.on())));
            self.resources.push(m);
            if let Some(ids) = self.db_ids.get_mut(name.as_str()) {
                ids.push(id);
            }
        }
    }
}
