//! The run's last phase: its report — phases, steps, suites, what became of each
//! resource — and, for a kept environment, how to reach it.

use super::*;

/// The run's judgement, decided before the report.
pub(super) struct Judged {
    pub(super) verdict: Verdict,
    pub(super) reason: Option<String>,
    pub(super) exit_code: i32,
    pub(super) keep: bool,
    pub(super) suites: Vec<SuiteResult>,
    pub(super) deploy: Option<DeployReport>,
    pub(super) chaos: Option<crate::compare::chaos::ChaosReport>,
}

/// The run's report (not yet redacted); a kept environment's connection file is written
/// next to it.
#[allow(clippy::too_many_arguments)]
pub(super) fn report<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    run: &Prepared,
    graph: &GraphResult,
    clock: &Clock,
    mut steps: Vec<StepTiming>,
    judged: Judged,
    down: Down,
    reporter: &dyn Reporter,
) -> RunReport {
    let d = &loaded.desc;
    let Judged { verdict, reason, exit_code, keep, suites, deploy, chaos } = judged;
    let run_id = &opts.run_id;
    let mut phases = phase_timings(&steps, graph.failure.as_ref().map(|f| f.0.as_str()));
    phases.extend(down.phase);
    steps.extend(down.steps);
    let resources = resource_records(provider, &run.plan, &run.journal, graph, &down.leftovers, keep);
    let failure = graph.failure.as_ref().map(|(id, e)| Failure {
        phase: phase_of(run.plan.resource(id).map(|r| r.kind), e),
        resource: Some(id.clone()),
        message: e.message.clone(),
        log_tail: e.log_tail.clone(),
        log: e.log.as_ref().map(|p| p.display().to_string()),
    });
    let total = clock.elapsed();
    let report_phase_start = Instant::now();
    let mut report = RunReport {
        change: opts.change.clone(),
        schema_version: REPORT_SCHEMA_VERSION,
        run_id: run_id.clone(),
        environment: d.name.clone(),
        provider: d.provider(),
        description: loaded.path.display().to_string(),
        release: opts.release.clone(),
        artifact: run.plan.release.artifact.clone(),
        started_at: run.started_at,
        finished_at: Utc::now(),
        verdict,
        exit_code,
        reason,
        failure,
        backups: graph.backups.clone(),
        phases,
        steps,
        suites,
        resources,
        teardown: Teardown {
            policy: opts.destroy,
            status: down.status,
            duration_ms: down.duration_ms,
            leftovers: down.leftovers,
            expires_at: keep.then_some(run.expires_at),
        },
        total_ms: total.as_millis() as u64,
        overhead_ms: total.saturating_sub(clock.external_total()).as_millis() as u64,
        access: None,
        deploy,
        chaos,
    };
    // A kept environment says how to reach it: addresses in the report, secrets only
    // in the owner's private connection file.
    if keep {
        let connection = Connection {
            run_id: run_id.clone(),
            databases: graph.outputs.databases.clone(),
            services: graph.outputs.services.clone(),
        };
        match connection.write(&run.state_dir) {
            Ok(()) => report.access = Some(access(&connection, run_id, run.expires_at, &run.logs_dir)),
            Err(e) => reporter.event(Event::ConnectionUnkept { error: e.to_string() }),
        }
    }
    report.phases.push(PhaseTiming {
        phase: "report".into(),
        start_ms: clock.ms(report_phase_start),
        duration_ms: 0,
        status: PhaseStatus::Ok,
    });
    report
}

/// What became of each resource of the plan, named by its provider. A journal that
/// cannot be read here was reported by teardown already (the run is "unknown"); the
/// report then names resources by the outputs the steps returned.
fn resource_records<P: Provider>(
    provider: &P,
    plan: &plan::Plan,
    journal: &Journal,
    graph: &GraphResult,
    leftovers: &[Leftover],
    keep: bool,
) -> Vec<ResourceRecord> {
    let handles: BTreeMap<String, String> = crate::engine::journal::read(journal.path())
        .map(|records| crate::engine::journal::State::from_records(&records).entries)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.id.clone(), provider.provider_id(&e)?)))
        .collect();
    plan.resources
        .iter()
        .filter(|r| !r.kind.is_suite())
        .map(|r| {
            let created = handles.get(&r.id).cloned().or_else(|| graph.created.get(&r.id).cloned());
            let status = if created.is_none() && graph.status_of(&r.id) == Some("pending") {
                ResourceStatus::NeverCreated
            } else if leftovers.iter().any(|l| l.id == r.id) {
                ResourceStatus::LeftBehind
            } else if keep {
                ResourceStatus::Kept
            } else {
                ResourceStatus::Destroyed
            };
            ResourceRecord { id: r.id.clone(), kind: r.kind.as_str().into(), provider_id: created, status }
        })
        .collect()
}

/// How to reach a kept environment, without its secrets.
fn access(c: &Connection, run_id: &str, expires_at: chrono::DateTime<Utc>, logs_dir: &std::path::Path) -> Access {
    let databases: BTreeMap<String, DatabaseAccess> = c
        .databases
        .iter()
        .map(|(name, d)| {
            let d = DatabaseAccess {
                host: d.host.clone(),
                port: d.port.clone(),
                name: d.name.clone(),
                user: d.user.clone(),
            };
            (name.clone(), d)
        })
        .collect();
    let mut commands = vec![format!("rehearse env {run_id}")];
    if let Some(db) = databases.keys().next() {
        commands.push(format!("rehearse psql {run_id} {db}"));
    }
    if let Some(service) = c.services.keys().next() {
        commands.push(format!("rehearse logs {run_id} {service}"));
    }
    commands.push(format!("rehearse down {run_id}"));
    Access {
        expires_at,
        logs_dir: logs_dir.display().to_string(),
        services: c.services.iter().map(|(name, s)| (name.clone(), s.urls.clone())).collect(),
        databases,
        commands,
    }
}
