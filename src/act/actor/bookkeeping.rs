//! The store writes around the decisions: deployments and samples seen,
//! answers from humans, and the drill schedule. Trouble here is logged,
//! never fatal.

use super::*;

impl Actor {
    /// After each input: record a new deployment and the latest sample of an
    /// open incident. Store trouble here is logged, never fatal.
    pub async fn observed(&mut self, engine: &Engine) {
        if self
            .bookkeeping_paused_until
            .is_some_and(|until| std::time::Instant::now() < until)
        {
            return;
        }
        if let Some(deployment) = engine.deployment()
            && self.recorded_deployment != Some(deployment.at)
        {
            let source = if deployment.rollback {
                DeploymentSource::Rollback
            } else if deployment.seen {
                DeploymentSource::Observed
            } else {
                DeploymentSource::Announced
            };
            let new = NewDeployment {
                target: self.name.clone(),
                version: deployment.version.clone(),
                previous: deployment.previous.clone(),
                migrations: deployment.migrations.clone(),
                at: deployment.at,
                rollback: deployment.rollback,
                source,
            };
            match self.store.record_deployment(&new).await {
                Ok(_) => self.recorded_deployment = Some(deployment.at),
                Err(error) => {
                    tracing::error!(target_name = %self.name, %error, "cannot record the deployment");
                    self.pause_bookkeeping();
                    return;
                }
            }
        }
        let Some(incident) = engine
            .incident()
            .and_then(|i| self.incidents.get(&i.id))
            .copied()
        else {
            return;
        };
        // The clear clock before the samples: a restart counts the clear time
        // up to the latest stored sample, so a sample must never be stored
        // after a breach whose reset of the clock is not.
        let clear_since = engine.incident().and_then(|i| i.clear_since());
        if self.recorded_clear_since != Some((incident, clear_since)) {
            match self
                .store
                .set_incident_clear_since(incident, clear_since)
                .await
            {
                Ok(()) => self.recorded_clear_since = Some((incident, clear_since)),
                Err(error) => {
                    tracing::warn!(target_name = %self.name, %error, "cannot record how long the rules have been clear");
                    return;
                }
            }
        }
        let fresh: Vec<SamplePoint> = engine
            .samples()
            .filter(|s| self.last_sample_at.is_none_or(|t| s.at() > t))
            .map(point)
            .collect();
        if let Some(last) = fresh.last() {
            let at = last.at;
            match self.store.record_samples(incident, &fresh).await {
                Ok(()) => self.last_sample_at = Some(at),
                Err(error) => {
                    tracing::warn!(target_name = %self.name, %error, "cannot record samples")
                }
            }
        }
    }

    /// Answers recorded since the last look (`rollwatch incidents ack|hold|approve`,
    /// possibly from another machine), as engine events, oldest first.
    pub async fn new_answers(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let stored: Vec<i64> = self.incidents.values().copied().collect();
        for incident in stored {
            let answers = match self.store.answers(incident).await {
                Ok(answers) => answers,
                Err(error) => {
                    tracing::warn!(target_name = %self.name, %error, "cannot read the answers");
                    continue;
                }
            };
            let last = self.applied_answers.get(&incident).copied().unwrap_or(0);
            for answer in answers.iter().filter(|a| a.id > last) {
                let by = Some(answer.by.clone());
                self.say(&format!(
                    "{} {} incident {incident}: {} by {}",
                    time_text(Utc::now()),
                    self.name,
                    answer.kind.as_str(),
                    answer.by
                ));
                events.push(match answer.kind {
                    AnswerKind::Ack => Event::Ack { by },
                    AnswerKind::Hold => Event::Hold { by },
                    AnswerKind::Approve => Event::Approve { by },
                });
            }
            if let Some(newest) = answers.iter().map(|a| a.id).max() {
                self.applied_answers.insert(incident, newest.max(last));
            }
        }
        events
    }

    /// Carries out a drill when the policy schedules them and the last one is
    /// older than `drill_every`; an overdue drill that cannot run now (an
    /// incident is open) is reported and tried again later.
    pub async fn drill_if_due(&mut self, engine: &Engine, now: DateTime<Utc>) {
        let Some(every) = self.target.procedure.as_ref().and_then(|p| p.drill_every) else {
            return;
        };
        if !self.resumed
            || self.drill.as_ref().is_some_and(|d| !d.is_finished())
            || self
                .next_drill_check
                .is_some_and(|t| std::time::Instant::now() < t)
        {
            return;
        }
        self.drill = None;
        self.next_drill_check = Some(std::time::Instant::now() + DRILL_CHECK);
        let last = match self.store.last_drill(&self.name).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(target_name = %self.name, %error, "cannot read the last drill");
                return;
            }
        };
        let every_delta = chrono::TimeDelta::from_std(every).unwrap_or(chrono::TimeDelta::MAX);
        if last
            .as_ref()
            .is_some_and(|l| now - l.opened_at < every_delta)
        {
            return;
        }
        let last_text = last.as_ref().map_or_else(
            || "never drilled".to_string(),
            |l| format!("last drill {} at {}", l.id, time_text(l.opened_at)),
        );
        let every_text = crate::units::format_duration(every_delta);
        if engine.incident().is_some() || self.running.is_some() {
            self.say(&format!(
                "{} {} DRILL OVERDUE ({last_text}, due every {every_text}): waiting for the open incident to end",
                time_text(now),
                self.name
            ));
            return;
        }
        self.say(&format!(
            "{} {} drill due ({last_text}, every {every_text}): starting it",
            time_text(now),
            self.name
        ));
        let (store, target, say) = (
            self.store.clone(),
            Arc::clone(&self.target),
            Arc::clone(&self.say),
        );
        self.drill = Some(self.spawn(async move {
            if let Err(error) =
                crate::act::drill::run(&store, &target, say, "the drill schedule").await
            {
                tracing::error!(%error, "the scheduled drill could not be recorded");
            }
        }));
    }

    pub(super) fn pause_bookkeeping(&mut self) {
        tracing::warn!(
            target_name = %self.name,
            "pausing deployment and sample records for {}s after a failed write",
            BOOKKEEPING_PAUSE.as_secs()
        );
        self.bookkeeping_paused_until = Some(std::time::Instant::now() + BOOKKEEPING_PAUSE);
    }

    pub(super) fn write(&self, what: &str, result: Result<(), StoreError>) {
        if let Err(error) = result {
            tracing::error!(target_name = %self.name, %error, "cannot {what}");
            self.say(&format!(
                "{} {} ERROR cannot {what}: {error}",
                time_text(Utc::now()),
                self.name
            ));
        }
    }

    /// Says loudly that the store is down and rollwatch therefore does not
    /// act; returns the reason for the engine.
    pub(super) fn store_down(&self, what: &str, error: &StoreError, decision: &Decision) -> String {
        let acting = if decision.action == Action::Rollback {
            "NOT ROLLING BACK automatically: a rollback runs only after its record is stored. A human must decide"
        } else {
            "the decision is not recorded"
        };
        let reason = format!(
            "cannot {what} in {}: {error}; {acting}",
            self.store.database()
        );
        tracing::error!(target_name = %self.name, rule = %decision.rule, "{reason}");
        let headline = if matches!(error, StoreError::Fenced { .. }) {
            "FENCED (another replica owns the target now)"
        } else {
            "DATABASE UNREACHABLE"
        };
        self.say(&format!(
            "{} {} {headline}: {reason}",
            time_text(Utc::now()),
            self.name
        ));
        reason
    }
}
