//! Handling one engine decision: the stored incident, its notices, and the
//! rollback procedure started only once all of them are stored.

use super::*;

impl Actor {
    /// Stores one decision and does what it asks.
    pub async fn handle(&mut self, decision: &Decision, engine: &Engine) -> Followup {
        let refuse = |reason: String| match decision.incident {
            Some(engine_incident) if decision.action == Action::Rollback => {
                Followup::RollbackRefused {
                    engine_incident,
                    reason,
                }
            }
            _ => Followup::None,
        };
        if !self.resumed && decision.action == Action::Rollback {
            let reason = format!(
                "the unfinished incidents in {} could not be read yet; NOT ROLLING BACK automatically: a rollback runs only after its record is stored. A human must decide",
                self.store.database()
            );
            tracing::error!(target_name = %self.name, rule = %decision.rule, "{reason}");
            self.say(&format!(
                "{} {} DATABASE UNREACHABLE: {reason}",
                time_text(Utc::now()),
                self.name
            ));
            return refuse(reason);
        }
        let incident = match decision.incident {
            Some(engine_incident) => match self
                .stored_incident(engine_incident, decision, engine)
                .await
            {
                Ok(id) => Some(id),
                Err(error) => {
                    let reason = self.store_down("open the incident", &error, decision);
                    self.page_without_database(decision, &reason).await;
                    return refuse(reason);
                }
            },
            None => None,
        };
        if let Err(error) = self
            .store
            .record_decision(&self.name, incident, decision, &self.target.policy)
            .await
        {
            let reason = self.store_down("record the decision", &error, decision);
            self.page_without_database(decision, &reason).await;
            return refuse(reason);
        }
        let Some(id) = incident else {
            if decision.action.pages() {
                self.tell(
                    None,
                    decision,
                    &DedupeKey::PageWithoutIncident {
                        target: self.name.clone(),
                        at: decision.at,
                    },
                )
                .await;
            } else if decision.cause == Cause::BurstEnded {
                // A burst that ended by itself opens no incident; the team
                // is still told, once.
                self.tell(
                    None,
                    decision,
                    &DedupeKey::BurstEnded {
                        target: self.name.clone(),
                        at: decision.at,
                    },
                )
                .await;
            }
            return Followup::None;
        };
        match (decision.action, decision.cause) {
            (Action::Rollback, _) => {
                if let Err(error) = self
                    .store
                    .set_incident_phase(id, IncidentPhase::RollingBack, decision.at, None)
                    .await
                {
                    return refuse(self.store_down(
                        "record the rollback's start",
                        &error,
                        decision,
                    ));
                }
                // "Notify team" comes before the first step.
                let key = DedupeKey::RollbackNotice {
                    incident: id,
                    at: decision.at,
                };
                if !self.tell(Some(id), decision, &key).await {
                    return refuse(format!(
                        "not rolling back: the notice to the team cannot be stored in {}",
                        self.store.database()
                    ));
                }
                let engine_incident = decision.incident.unwrap_or_default();
                if let Some(drill) = self.drill.take()
                    && !drill.is_finished()
                {
                    // Both would run the same scripts: the drill (bounded by its
                    // steps' timeouts) finishes first.
                    self.say(&format!(
                        "{} {} a scheduled drill is running: the rollback starts when it ends",
                        time_text(Utc::now()),
                        self.name
                    ));
                    let _ = drill.await;
                }
                if self.running.is_some() {
                    return refuse("not rolling back: another procedure is still running".into());
                }
                self.start_procedure(
                    engine_incident,
                    Order {
                        incident: id,
                        tier: decision.tier,
                        component: decision.component.clone(),
                        migrations: decision.migrations.clone(),
                        reason: decision.explanation.clone(),
                        from_version: decision.from_version.clone(),
                        to_version: decision.to_version.clone(),
                    },
                );
            }
            (_, Cause::RollbackFinished) => {
                let until = match engine.incident().map(|i| i.phase) {
                    Some(Phase::Watching { until, .. }) => Some(until),
                    _ => None,
                };
                self.write(
                    "record the watch",
                    self.store
                        .set_incident_phase(id, IncidentPhase::Watching, decision.at, until)
                        .await,
                );
                self.tell(Some(id), decision, &DedupeKey::RolledBack { incident: id })
                    .await;
            }
            (_, Cause::Stable) => self.ended(id, decision, IncidentOutcome::Stable).await,
            (_, Cause::Recovered) => self.ended(id, decision, IncidentOutcome::Recovered).await,
            (_, Cause::RollbackFailed | Cause::WatchFailed) => {
                self.write(
                    "record the escalation",
                    self.store
                        .set_incident_phase(id, IncidentPhase::Escalated, decision.at, None)
                        .await,
                );
                self.tell(Some(id), decision, &DedupeKey::Escalation { incident: id })
                    .await;
                if self.until_done == Some(id) {
                    self.done = Some(IncidentEnd::Escalated);
                }
            }
            (_, Cause::Unanswered) => {
                // The engine's escalation deadline passed: carry it out.
                if let Some(message) = message::for_decision(
                    &self.target.policy,
                    decision,
                    Some(id),
                    self.store.database(),
                ) {
                    self.say(&format!(
                        "{} {} {}",
                        time_text(decision.at),
                        self.name,
                        message.subject
                    ));
                }
                self.tell(Some(id), decision, &DedupeKey::Unanswered { incident: id })
                    .await;
            }
            (Action::Page | Action::PageThenRollback, _) => {
                if let Some(deadline) = decision.deadline {
                    self.write(
                        "record the deadline",
                        self.store.set_incident_deadline(id, Some(deadline)).await,
                    );
                }
                // Keyed by the action: a repeat of the page is dropped, an
                // upgrade to page-then-rollback (with its deadline) is news.
                self.tell(
                    Some(id),
                    decision,
                    &DedupeKey::Page {
                        incident: id,
                        action: decision.action,
                    },
                )
                .await;
            }
            (_, Cause::Acknowledged | Cause::Held) => {
                // The answer cancelled the automatic rollback: so says the store.
                self.write(
                    "clear the deadline",
                    self.store.set_incident_deadline(id, None).await,
                );
            }
            (Action::Notify, _) => {
                self.tell(
                    Some(id),
                    decision,
                    &DedupeKey::Notice {
                        incident: id,
                        at: decision.at,
                    },
                )
                .await;
            }
            (Action::None, _) => {}
        }
        Followup::None
    }

    /// A page (the engine's escalation of a refused or failed rollback
    /// included) that cannot be stored still reaches on-call. A refused
    /// rollback is not sent here: the engine hears it failed and escalates.
    pub(super) async fn page_without_database(&mut self, decision: &Decision, reason: &str) {
        if decision.action.pages() {
            self.tell_without_database(decision, reason).await;
        }
    }

    pub(super) async fn ended(&mut self, id: i64, decision: &Decision, outcome: IncidentOutcome) {
        self.tell(Some(id), decision, &DedupeKey::Resolved { incident: id })
            .await;
        self.write(
            "resolve the incident",
            self.store.resolve_incident(id, outcome, decision.at).await,
        );
        self.incidents.retain(|_, stored| *stored != id);
        self.last_sample_at = None;
        if self.until_done == Some(id) {
            self.done = Some(IncidentEnd::Resolved(outcome));
        }
    }

    /// The stored incident of an engine incident, opened (with the samples so
    /// far) on its first decision.
    pub(super) async fn stored_incident(
        &mut self,
        engine_incident: u64,
        decision: &Decision,
        engine: &Engine,
    ) -> Result<i64, StoreError> {
        if let Some(id) = self.incidents.get(&engine_incident) {
            return Ok(*id);
        }
        let open = engine.incident();
        let new = NewIncident {
            target: self.name.clone(),
            kind: if open.is_some_and(|i| i.declared) {
                IncidentKind::Declared
            } else {
                IncidentKind::Rule
            },
            tier: decision.tier,
            rule: decision.rule.clone(),
            reason: String::new(),
            component: decision.component.clone(),
            from_version: decision
                .from_version
                .clone()
                .or_else(|| engine.deployment().and_then(|d| d.version.clone())),
            to_version: decision
                .to_version
                .clone()
                .or_else(|| engine.deployment().and_then(|d| d.previous.clone())),
            opened_at: open.map_or(decision.at, |i| i.opened_at),
            deadline: decision.deadline,
        };
        let id = match self.store.open_incident(&new).await {
            Ok(id) => id,
            // Left open by an earlier run that could not be taken up: carry on in it.
            Err(StoreError::IncidentAlreadyOpen { existing, .. }) => existing,
            Err(error) => return Err(error),
        };
        self.incidents.insert(engine_incident, id);
        let samples: Vec<SamplePoint> = engine.samples().map(point).collect();
        self.last_sample_at = samples.last().map(|s| s.at);
        if let Err(error) = self.store.record_samples(id, &samples).await {
            tracing::warn!(target_name = %self.name, %error, "cannot record the incident's samples");
        }
        Ok(id)
    }
}
