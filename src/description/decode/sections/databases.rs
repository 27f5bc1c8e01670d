//! `databases:`: each copy, its source and restore mode.

use std::path::PathBuf;
use std::time::Duration;

use super::super::rules::check_rds_identifier;
use super::super::Decoder;
use super::*;
use crate::description::yaml::Node;

impl Decoder {
    pub(super) fn database(
        &mut self,
        provider: Option<ProviderKind>,
        name: &str,
        path: &str,
        node: &Node,
    ) -> Option<Database> {
        let mut obj = self.obj(path, node, "a mapping with `name`, `source`, ...")?;
        let engine = match self.get(&mut obj, "engine") {
            Some(n) => self.enum_value(&format!("{path}.engine"), n, &[("postgres", Engine::Postgres)]),
            None => Some(Engine::Postgres),
        };
        let db_name = self.req_string(&mut obj, "name", "the database name inside the server, e.g. `shop`");
        let source = self
            .require(&mut obj, "source", "one of `rds_instance`, `aurora_cluster`, `backup_dir`, `url`")
            .and_then(|n| self.database_source(&format!("{path}.source"), n));
        let restore = match self.get(&mut obj, "restore") {
            Some(n) => self.enum_value(
                &format!("{path}.restore"),
                n,
                &[
                    ("newest-snapshot", RestoreMode::NewestSnapshot),
                    ("latest-restorable-time", RestoreMode::LatestRestorableTime),
                    ("aurora-clone", RestoreMode::AuroraClone),
                ],
            ),
            None => Some(RestoreMode::NewestSnapshot),
        };
        let instance_class = self.opt_string(&mut obj, "instance_class");
        let pool = self.get(&mut obj, "pool").and_then(|n| self.pool(&format!("{path}.pool"), n));
        let masking = self.opt_string(&mut obj, "masking").map(PathBuf::from);
        let timeout = match self.get(&mut obj, "timeout") {
            Some(n) => Some(self.duration(
                &format!("{path}.timeout"),
                n,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?),
            None => None,
        };
        self.finish(obj);
        let (source, restore) = (source?, restore?);
        let target = self.database_target(provider?, name, &source, restore, instance_class, pool);
        Some(Database { engine: engine?, name: db_name?, source, restore, target, masking, timeout })
    }

    /// `pool:` of a database: `size`, and optionally `instance_class`, `max_age`, `keep`.
    fn pool(&mut self, path: &str, node: &Node) -> Option<Pool> {
        let mut obj =
            self.obj(path, node, "a mapping with `size`, and optionally `instance_class`, `max_age`, `keep`")?;
        let size = self
            .require(&mut obj, "size", "how many ready copies to keep, e.g. `size: 3`")
            .and_then(|n| self.integer(&format!("{path}.size"), n, 1, i64::from(Pool::MAX_SIZE)));
        let instance_class = self.opt_string(&mut obj, "instance_class");
        let max_age = match self.get(&mut obj, "max_age") {
            Some(n) => self.duration(
                &format!("{path}.max_age"),
                n,
                Duration::from_secs(3600),
                Duration::from_secs(7 * 24 * 3600),
            ),
            None => Some(Pool::DEFAULT_MAX_AGE),
        };
        let keep = match self.get(&mut obj, "keep") {
            Some(n) => self.enum_value(
                &format!("{path}.keep"),
                n,
                &[("running", PoolKeep::Running), ("stopped", PoolKeep::Stopped)],
            ),
            None => Some(PoolKeep::Running),
        };
        self.finish(obj);
        if let Some(c) = &instance_class {
            if !c.strip_prefix("db.").is_some_and(super::super::rules::is_instance_type) {
                self.rule_err(&format!("{path}.instance_class"), format!("`{c}` is not an RDS instance class"))
                    .expected = Some("`db.` FAMILY.SIZE, e.g. `db.t3.medium`".into());
            }
        }
        Some(Pool { size: size? as u32, instance_class, max_age: max_age?, keep: keep? })
    }

    fn database_source(&mut self, path: &str, node: &Node) -> Option<DatabaseSource> {
        let mut obj =
            self.obj(path, node, "a mapping with one of `rds_instance`, `aurora_cluster`, `backup_dir`, `url`")?;
        let mut found = Vec::new();
        for key in ["rds_instance", "aurora_cluster", "backup_dir", "url"] {
            if let Some(s) = self.opt_string(&mut obj, key) {
                found.push((key, s));
            }
        }
        let pos = obj.pos;
        let has_unknown = obj.has_unknown();
        self.finish(obj);
        if found.len() > 1 {
            let keys: Vec<String> = found.iter().map(|(k, _)| format!("`{k}`")).collect();
            self.err(
                pos,
                format!("`{path}` names {} sources ({}); a database has exactly one", found.len(), keys.join(", ")),
            );
            return None;
        }
        let Some((key, value)) = found.pop() else {
            if !has_unknown {
                self.err(pos, format!("`{path}` names no source")).expected =
                    Some("one of `rds_instance`, `aurora_cluster`, `backup_dir`, `url`".into());
            }
            return None;
        };
        let vpos = self.positions.get(&format!("{path}.{key}"));
        Some(match key {
            "rds_instance" | "aurora_cluster" => {
                if let Err(msg) = check_rds_identifier(&value) {
                    self.err(
                        vpos,
                        format!(
                            "invalid {} identifier `{value}`: {msg}",
                            if key == "rds_instance" { "RDS instance" } else { "Aurora cluster" }
                        ),
                    );
                }
                if key == "rds_instance" {
                    DatabaseSource::RdsInstance(value)
                } else {
                    DatabaseSource::AuroraCluster(value)
                }
            }
            "backup_dir" => DatabaseSource::BackupDir(PathBuf::from(value)),
            _ => {
                if !(value.starts_with("postgres://") || value.starts_with("postgresql://"))
                    || url::Url::parse(&value).is_err()
                {
                    self.err(vpos, format!("`{path}.url` is not a PostgreSQL URL")).expected =
                        Some("`postgres://USER@HOST:PORT/DB` (password from PGPASSWORD or ~/.pgpass)".into());
                } else if let Some(short) = url_secrets(&value).into_iter().find(|p| p.len() < crate::secrets::MIN_LEN)
                {
                    let d = self.err(
                        vpos,
                        format!(
                            "`{path}.url` carries a password of {} character(s), too short to be told apart and \
                             kept out of logs and reports",
                            short.chars().count()
                        ),
                    );
                    d.help = Some("leave the password out of the URL: pass it in PGPASSWORD or ~/.pgpass".into());
                }
                DatabaseSource::Url(value)
            }
        })
    }
}
