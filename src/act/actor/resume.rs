//! Taking up what the store kept: unfinished incidents handed back to the
//! engine after a restart or a takeover, their procedures resumed.

use super::*;

impl Actor {
    /// `resume`, until it has worked once: with the store unreachable the
    /// target is watched but nothing is rolled back (an unfinished incident
    /// might be waiting), and the next poll tries again.
    pub async fn try_resume(&mut self, engine: &mut Engine, now: DateTime<Utc>) {
        // Each try may wait for a connection: not at every poll.
        if self.resumed
            || self
                .bookkeeping_paused_until
                .is_some_and(|until| std::time::Instant::now() < until)
        {
            return;
        }
        match self.resume(engine, now).await {
            Ok(()) => self.resumed = true,
            Err(error) => {
                self.pause_bookkeeping();
                let message = format!(
                    "cannot take up unfinished incidents from {}: {error}; watching, but NOT ACTING until the database answers",
                    self.store.database()
                );
                tracing::error!(target_name = %self.name, "{message}");
                self.say(&format!(
                    "{} {} DATABASE UNREACHABLE: {message}",
                    time_text(now),
                    self.name
                ));
            }
        }
    }

    /// Restores the latest recorded deployment and takes up unfinished
    /// incidents with their timers at their stored instants
    /// (`Engine::resume_incident` decides what they become): an open one keeps
    /// waiting for its answer, its page-then-rollback deadline and the
    /// escalation of its unanswered page (from the stored page's instant); a
    /// rollback that was running goes on where its stored steps say (never
    /// repeating one that may have run); a watch ends at its stored end
    /// (extended when too little of it is left to judge any rule: nothing was
    /// watched while rollwatch was down); an escalated one stays with the
    /// humans, and closes once its rules have been seen clear for
    /// `resolve_after`, counting the clear time observed before the stop.
    pub async fn resume(
        &mut self,
        engine: &mut Engine,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(latest) = self
            .store
            .deployments(&self.name, 1)
            .await?
            .into_iter()
            .next()
        {
            self.recorded_deployment = Some(latest.at);
            engine.restore_deployment(Deployment {
                at: latest.at,
                version: latest.version,
                previous: latest.previous,
                migrations: latest.migrations,
                rollback: latest.rollback,
                seen: latest.source != DeploymentSource::Announced,
            });
        }
        for unfinished in self.store.unfinished_incidents(&self.name).await? {
            let interrupted = unfinished.interrupted_steps().count();
            let record = unfinished.incident.clone();
            let IncidentState::Active { phase } = record.state else {
                continue;
            };
            if record.kind == IncidentKind::Drill {
                // A drill interrupted is a drill failed: never re-run on its own.
                for step in unfinished
                    .steps
                    .iter()
                    .filter(|s| s.may_have_run_unrecorded())
                {
                    self.store
                        .mark_step_unknown(step.id, now, "rollwatch stopped during the drill")
                        .await?;
                }
                self.store
                    .resolve_incident(record.id, IncidentOutcome::DrillFailed, now)
                    .await?;
                self.say(&format!(
                    "drill {} was interrupted by a restart: recorded as failed",
                    record.id
                ));
                continue;
            }
            let decisions = self.store.decisions(record.id).await?;
            let announced = decisions
                .iter()
                .map(|d| d.action)
                .max()
                .unwrap_or(Action::None);
            let paged_at = decisions
                .iter()
                .find(|d| awaits_answer(d.action, d.cause))
                .map(|d| d.at);
            let unanswered_escalated = decisions.iter().any(|d| d.cause == Cause::Unanswered);
            // An approve sets no flag in the store, but it is an answer.
            let approved = self
                .store
                .answers(record.id)
                .await?
                .iter()
                .any(|a| a.kind == AnswerKind::Approve);
            // The clear time seen before the stop ends at the last sample:
            // what followed it was not observed.
            let clear_for = match (
                record.clear_since,
                self.store.last_sample_at(record.id).await?,
            ) {
                (Some(since), Some(last)) if last > since => last - since,
                _ => chrono::TimeDelta::zero(),
            };
            let stored_watch_end = record
                .watch_until
                .unwrap_or(record.phase_at + engine.policy().stabilization);
            let engine_phase = match phase {
                IncidentPhase::Open => Phase::Open,
                IncidentPhase::RollingBack
                | IncidentPhase::Verifying
                | IncidentPhase::Recovering => Phase::RollingBack,
                IncidentPhase::Watching => Phase::Watching {
                    until: stored_watch_end,
                    saw_data: false,
                },
                IncidentPhase::Escalated => Phase::Escalated,
            };
            let tier = record.tier;
            let id = engine
                .resume_incident(
                    now,
                    Resumed {
                        opened_at: record.opened_at,
                        tier,
                        rule: record.rule.clone(),
                        component: record.component.clone(),
                        phase: engine_phase,
                        phase_at: record.phase_at,
                        announced,
                        acknowledged: record.acknowledged || approved,
                        held: record.held,
                        deadline: record.deadline,
                        declared: record.kind == IncidentKind::Declared,
                        from_version: record.from_version.clone(),
                        to_version: record.to_version.clone(),
                        paged_at,
                        unanswered_escalated,
                        clear_for,
                    },
                )
                .map_err(|e| StoreError::Invalid {
                    what: "resumed incident",
                    reason: e.to_string(),
                })?;
            self.incidents.insert(id, record.id);
            self.recorded_clear_since = Some((record.id, record.clear_since));
            self.say(&format!(
                "{} {} taking up incident {} ({}, {} {}){}",
                time_text(now),
                self.name,
                record.id,
                phase.as_str(),
                record.tier,
                record.rule,
                if interrupted > 0 {
                    format!(
                        "; {interrupted} step(s) were running when rollwatch stopped: waiting for the end their runners record (a step whose runner is gone is unknown and not run again unless idempotent)"
                    )
                } else {
                    String::new()
                }
            ));
            match phase {
                IncidentPhase::RollingBack
                | IncidentPhase::Verifying
                | IncidentPhase::Recovering => {
                    let migrations = self.migrations_of(record.from_version.as_deref()).await;
                    let reason = if record.reason.is_empty() {
                        decisions
                            .iter()
                            .rev()
                            .find(|d| d.action == Action::Rollback)
                            .map_or_else(String::new, |d| d.explanation.clone())
                    } else {
                        record.reason.clone()
                    };
                    self.start_procedure(
                        id,
                        Order {
                            incident: record.id,
                            tier,
                            component: record.component.clone(),
                            migrations,
                            reason,
                            from_version: record.from_version.clone(),
                            to_version: record.to_version.clone(),
                        },
                    );
                }
                IncidentPhase::Watching => {
                    let Some(Phase::Watching { until, .. }) = engine.incident().map(|i| i.phase)
                    else {
                        continue;
                    };
                    let why = if until == stored_watch_end {
                        "its stored end".to_string()
                    } else {
                        // The watch's start (the rollback's end) stays as stored.
                        self.store
                            .set_incident_phase(
                                record.id,
                                IncidentPhase::Watching,
                                record.phase_at,
                                Some(until),
                            )
                            .await?;
                        format!(
                            "extended from its stored end {}: too little was left to judge any rule (the longest rule's `for` plus one interval)",
                            time_text(stored_watch_end)
                        )
                    };
                    self.say(&format!(
                        "{} {} incident {}: nothing was watched while rollwatch was down; watching again until {}, {why}",
                        time_text(now),
                        self.name,
                        record.id,
                        time_text(until)
                    ));
                }
                IncidentPhase::Open => {
                    let escalate_after = engine.policy().actions.escalate_after;
                    let mut timers = Vec::new();
                    if let Some(paged) = paged_at.filter(|_| {
                        !unanswered_escalated && !record.acknowledged && !approved && !record.held
                    }) {
                        timers.push(format!(
                            "the page of {} escalates at {} unless answered",
                            time_text(paged),
                            time_text(paged + escalate_after)
                        ));
                    }
                    let resumed = engine.incident();
                    if let Some(deadline) = resumed.and_then(|i| i.deadline) {
                        let postponed = resumed.and_then(|i| i.deadline_postponed_from);
                        if let Some(stored) = postponed {
                            self.store
                                .set_incident_deadline(record.id, Some(deadline))
                                .await?;
                            timers.push(format!(
                                "the automatic rollback due at {} is postponed to {}: the breach must be confirmed on current data first",
                                time_text(stored),
                                time_text(deadline)
                            ));
                        } else {
                            timers.push(format!(
                                "the automatic rollback is due at {} unless answered",
                                time_text(deadline)
                            ));
                        }
                    }
                    if !timers.is_empty() {
                        self.say(&format!(
                            "{} {} incident {}: {}",
                            time_text(now),
                            self.name,
                            record.id,
                            timers.join("; ")
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) async fn migrations_of(&self, version: Option<&str>) -> Vec<String> {
        match self.store.deployments(&self.name, 20).await {
            Ok(deployments) => deployments
                .into_iter()
                .find(|d| !d.rollback && d.version.as_deref() == version)
                .map(|d| d.migrations)
                .unwrap_or_default(),
            Err(error) => {
                tracing::error!(target_name = %self.name, %error, "cannot read the deployments: assuming no migrations");
                Vec::new()
            }
        }
    }
}
