//! The fake's EC2: instances (invisible, then pending, then running) and security
//! groups.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

impl Ec2Api for FakeCloud {
    async fn create_security_group(
        &self,
        name: &str,
        _description: &str,
        _vpc_id: &str,
        tags: &[Tag],
    ) -> ApiResult<String> {
        let call = self.enter("CreateSecurityGroup", name, true)?;
        if self.exists("sg", |_, r| r.name == name) {
            return Err(fail("InvalidGroup.Duplicate", ErrorKind::Refused));
        }
        let id = self.new_id("sg");
        // Describes are eventually consistent for groups too.
        self.create_named(&id, name, "sg", tags, Duration::ZERO, self.faults.invisible_for);
        self.answer(&call, std::slice::from_ref(&id), id.clone()).await
    }

    async fn authorize_ingress(&self, group_id: &str, _cidrs: &[String], ports: &[u16]) -> ApiResult<()> {
        let call = self.enter("AuthorizeSecurityGroupIngress", group_id, true)?;
        self.audit("AuthorizeSecurityGroupIngress", group_id);
        self.audit_ingress(group_id, ports);
        match self.state.lock().expect("fake lock").res.get_mut(group_id) {
            Some(r) if ports.iter().any(|p| r.authorized.contains(p)) => {
                return Err(fail("InvalidPermission.Duplicate", ErrorKind::Refused))
            }
            Some(r) => r.authorized.extend(ports.iter().copied()),
            None => return Err(fail("InvalidGroup.NotFound", ErrorKind::NotFound)),
        }
        self.leave(&call, ())
    }

    async fn describe_security_groups(&self, ids: &[String]) -> ApiResult<Vec<SecurityGroup>> {
        self.enter("DescribeSecurityGroups", &ids.join(","), false)?;
        Ok(self
            .live("sg")
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .map(|(id, r)| SecurityGroup { id, name: r.name, vpc_id: None, tags: r.tags })
            .collect())
    }

    async fn security_groups_tagged(&self, tag_key: &str) -> ApiResult<Vec<SecurityGroup>> {
        self.enter("DescribeSecurityGroups", tag_key, false)?;
        Ok(self
            .live("sg")
            .into_iter()
            .filter(|(_, r)| tag_value(&r.tags, tag_key).is_some())
            .map(|(id, r)| SecurityGroup { id, name: r.name, vpc_id: None, tags: r.tags })
            .collect())
    }

    async fn delete_security_group(&self, id: &str) -> ApiResult<()> {
        let call = self.enter("DeleteSecurityGroup", id, true)?;
        self.audit("DeleteSecurityGroup", id);
        // Still used by an instance, database or cluster that is not gone yet.
        if self.in_use(id, &["instance", "db", "cluster"]) {
            return Err(fail("DependencyViolation", ErrorKind::InUse));
        }
        let now = Instant::now();
        let mut st = self.state.lock().expect("fake lock");
        match st.res.get_mut(id) {
            Some(r) if r.gone_at.is_none() => r.gone_at = Some(now),
            _ => return Err(fail("InvalidGroup.NotFound", ErrorKind::NotFound)),
        }
        drop(st);
        self.leave(&call, ())
    }

    async fn run_instances(&self, req: &RunInstances) -> ApiResult<Vec<String>> {
        let call = self.enter("RunInstances", &req.client_token, true)?;
        {
            let mut st = self.state.lock().expect("fake lock");
            // A retried call with the same client token gets the same instances.
            if let Some(ids) = st.tokens.get(&req.client_token).cloned() {
                drop(st);
                return self.leave(&call, ids);
            }
            if rand(&mut st) < self.faults.capacity {
                st.injected += 1;
                return Err(fail("InsufficientInstanceCapacity", ErrorKind::Refused));
            }
        }
        let mut ids = Vec::new();
        for _ in 0..req.count {
            let id = self.new_id("i");
            let boot = {
                let mut st = self.state.lock().expect("fake lock");
                let d = between(&mut st, self.faults.boot);
                st.drawn.push(("instance", "create", d));
                d
            };
            self.create_named(&id, &req.client_token, "instance", &req.tags, boot, self.faults.invisible_for);
            self.launched_with(&id, req);
            ids.push(id);
        }
        self.state.lock().expect("fake lock").tokens.insert(req.client_token.clone(), ids.clone());
        self.answer(&call, &ids, ids.clone()).await
    }

    async fn describe_instances(&self, ids: &[String]) -> ApiResult<Vec<Instance>> {
        self.enter("DescribeInstances", &ids.join(","), false)?;
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        // Eventual consistency: an id not visible yet is unknown.
        if ids.iter().any(|id| st.res.get(id).is_some_and(|r| r.visible_at > now)) {
            return Err(fail("InvalidInstanceID.NotFound", ErrorKind::NotFound));
        }
        Ok(ids
            .iter()
            .filter_map(|id| st.res.get(id).filter(|r| r.kind == "instance").map(|r| Self::instance(id, r)))
            .collect())
    }

    async fn instances_tagged(&self, tag_key: &str) -> ApiResult<Vec<Instance>> {
        self.enter("DescribeInstances", tag_key, false)?;
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        Ok(st
            .res
            .iter()
            .filter(|(_, r)| r.kind == "instance" && r.visible_at <= now && tag_value(&r.tags, tag_key).is_some())
            .map(|(id, r)| Self::instance(id, r))
            .collect())
    }

    async fn console_output(&self, id: &str) -> ApiResult<Option<String>> {
        self.console_of(id).await
    }

    async fn create_tags(&self, ids: &[String], tags: &[Tag]) -> ApiResult<()> {
        let call = self.enter("CreateTags", &ids.join(","), true)?;
        for id in ids {
            self.audit("CreateTags", id);
        }
        self.set_tags(ids, tags);
        self.leave(&call, ())
    }

    /// As EC2: a stop of a stopped or stopping instance and a start of a running or
    /// pending one change nothing; anything else not in the state the action needs is
    /// `IncorrectInstanceState`.
    async fn instance_action(&self, ids: &[String], action: InstanceAction) -> ApiResult<()> {
        let op = action.operation();
        let call = self.enter(op, &ids.join(","), true)?;
        for id in ids {
            self.audit(op, id);
        }
        let now = Instant::now();
        {
            let mut st = self.state.lock().expect("fake lock");
            for id in ids {
                let Some(r) = st.res.get(id).filter(|r| r.kind == "instance" && r.visible_at <= now) else {
                    return Err(fail("InvalidInstanceID.NotFound", ErrorKind::NotFound));
                };
                let state = Self::instance(id, r).state;
                let allowed = match action {
                    InstanceAction::Stop => matches!(state.as_str(), "running" | "stopping" | "stopped"),
                    InstanceAction::Start => matches!(state.as_str(), "stopped" | "pending" | "running"),
                    InstanceAction::Reboot => state == "running",
                };
                if !allowed {
                    return Err(fail("IncorrectInstanceState", ErrorKind::Refused));
                }
            }
            for id in ids {
                let (stop, boot) = (Self::drawn(id, self.faults.reboot), Self::drawn(id, self.faults.boot));
                let Some(r) = st.res.get_mut(id) else { continue };
                match action {
                    InstanceAction::Stop if r.stopped_from.is_none() => r.stopped_from = Some(now + stop),
                    InstanceAction::Start if r.stopped_from.is_some_and(|s| s <= now) => {
                        r.stopped_from = None;
                        r.starting_until = Some(now + boot);
                    }
                    InstanceAction::Reboot => r.rebooting_until = Some(now + stop),
                    _ => {}
                }
            }
        }
        self.leave(&call, ())
    }

    async fn terminate_instances(&self, ids: &[String]) -> ApiResult<()> {
        let call = self.enter("TerminateInstances", &ids.join(","), true)?;
        for id in ids {
            self.audit("TerminateInstances", id);
        }
        let now = Instant::now();
        {
            let mut st = self.state.lock().expect("fake lock");
            for id in ids {
                let took = between(&mut st, self.faults.delete);
                st.drawn.push(("instance", "delete", took));
                if let Some(r) = st.res.get_mut(id) {
                    r.gone_at.get_or_insert(now + took);
                }
            }
        }
        self.leave(&call, ())
    }
}
