//! The batch runner: every tick (and whenever a batch is created or cancelled) it reads the
//! unfinished batches from the store, moves their statuses on, asks the scheduler
//! ([`crate::batch::schedule::decide`]) what to run now, leases that many lines and sends
//! each through the chat pipeline ([`crate::proxy::chat`]) as the batch's own key — limited to
//! the sites the plan chose, without the interactive rate limits, at the batch discount — and
//! stores the answer as the line's result.
//!
//! Capacity: per instance, at most `concurrency` batch lines in flight per deployment, and
//! none while the deployment has `deployment_capacity` requests in flight (interactive
//! requests are never refused for batch work; batch work only takes what they leave).
//!
//! Crash safety: a line is leased before it is sent and its result stored before the lease is
//! dropped; a line whose result was stored is never sent again, and a line in flight when an
//! instance dies is sent again once its lease runs out. Lines in flight count as requests in
//! flight, so a graceful shutdown waits for them (and the runner starts no new ones).
//!
//! Time: deadlines, plans and status times are on the pricing clock; the capacity of a slot
//! is converted from measured wall-clock service times by the clock's measured speed (60×
//! under the demo's replay).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::objects;
use super::{BatchService, PlanView};
use crate::access::Principal;
use crate::api::chat;
use crate::batch::forecast::{NodeForecast, PricePoint};
use crate::batch::schedule::{self, Pending, Site};
use crate::batch::{BatchRecord, BatchStatus, FileObject, LeasedLine, LineResult, Transition, PURPOSE_OUTPUT};
use crate::proxy::chat::{serve, AnswerAs, BatchRun, Exchange};
use crate::proxy::{Downstream, DownstreamError, Gateway, Record, RequestHead, ResponseHead, Surface};
use crate::routing::tags;
use crate::telemetry::BreakerState;

/// A line's answer, captured in memory.
#[derive(Default)]
struct Capture {
    status: u16,
    body: Vec<u8>,
}

#[async_trait]
impl Downstream for Capture {
    async fn read_body(&mut self) -> Result<Option<Bytes>, DownstreamError> {
        Ok(None)
    }
    async fn send_head(&mut self, head: ResponseHead) -> Result<(), DownstreamError> {
        self.status = head.status;
        Ok(())
    }
    async fn send_body(&mut self, chunk: Bytes, _end: bool) -> Result<(), DownstreamError> {
        self.body.extend_from_slice(&chunk);
        Ok(())
    }
    fn close_after(&mut self) {}
}

/// What a finished line task hands back.
struct Done {
    deployment: String,
    /// Wall-clock service time.
    took: Duration,
}

/// The runner's memory between ticks.
struct State {
    /// Batch lines this instance has in flight, per deployment id.
    in_flight: HashMap<String, u32>,
    /// Batches with a line task running here.
    busy: HashMap<String, u32>,
    /// Smoothed wall-clock service time per deployment id, seconds.
    service: HashMap<String, f64>,
    /// Pricing-clock seconds per wall second, smoothed.
    speed: f64,
    last: Option<(Instant, i64)>,
    /// Price history per node, built incrementally from the price history frames.
    history: HashMap<String, Vec<PricePoint>>,
    history_upto: i64,
    /// The planned start last stored per batch.
    stored_start: HashMap<String, Option<i64>>,
    /// When the leases were last renewed.
    renewed: Option<Instant>,
}

/// Runs until `shutdown` resolves; then starts nothing new (lines in flight finish as
/// requests in flight, which the graceful shutdown waits for).
pub async fn run(gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let Some(svc) = gw.batches.clone() else { return };
    let mut st = State {
        in_flight: HashMap::new(),
        busy: HashMap::new(),
        service: HashMap::new(),
        speed: 1.0,
        last: None,
        history: HashMap::new(),
        history_upto: i64::MIN,
        stored_start: HashMap::new(),
        renewed: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Done)>();
    let mut tick = tokio::time::interval(svc.settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
            _ = svc.wake.notified() => {}
            Some((batch, done)) = rx.recv() => {
                settle(&mut st, &batch, &done);
                // More lines may start now; gather what else finished first.
                while let Ok((b, d)) = rx.try_recv() {
                    settle(&mut st, &b, &d);
                }
            }
        }
        if let Err(e) = step(&gw, &svc, &mut st, &tx).await {
            tracing::warn!(error = %e, "batch runner: tick failed; retrying next tick");
        }
    }
}

fn settle(st: &mut State, batch: &str, done: &Done) {
    if let Some(n) = st.in_flight.get_mut(&done.deployment) {
        *n = n.saturating_sub(1);
    }
    if let Some(n) = st.busy.get_mut(batch) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.busy.remove(batch);
        }
    }
    let s = st.service.entry(done.deployment.clone()).or_insert(done.took.as_secs_f64());
    *s = 0.8 * *s + 0.2 * done.took.as_secs_f64();
}

async fn step(gw: &Arc<Gateway>, svc: &Arc<BatchService>, st: &mut State, tx: &tokio::sync::mpsc::UnboundedSender<(String, Done)>) -> Result<(), String> {
    let clock = gw.pricing.clock();
    let now_ms = clock.now_ms();
    measure_speed(st, now_ms);
    // Leases are renewed four times per lease period while lines are in flight.
    let renew_due = st.renewed.is_none_or(|t| t.elapsed() >= svc.settings.lease / 4);
    if renew_due && !st.in_flight.values().all(|&n| n == 0) {
        let until = crate::clock::now_ms() + svc.settings.lease.as_millis() as i64;
        svc.store.renew_leases(&svc.instance, until).await.map_err(|e| e.to_string())?;
        st.renewed = Some(Instant::now());
    }
    let active = svc.store.active_batches().await.map_err(|e| e.to_string())?;
    let mut runnable: Vec<BatchRecord> = Vec::new();
    for b in active {
        match b.status {
            BatchStatus::Validating => {
                svc.store.transition(&b.id, &[BatchStatus::Validating], BatchStatus::InProgress, now_ms, &Transition::default()).await.map_err(|e| e.to_string())?;
                runnable.push(BatchRecord { status: BatchStatus::InProgress, in_progress_ms: Some(now_ms), ..b });
            }
            BatchStatus::InProgress if b.counts.unfinished() == 0 => finalize(gw, svc, &b, BatchStatus::Completed).await?,
            BatchStatus::InProgress if now_ms >= b.expires_ms => {
                if quiet(st, &b) {
                    finalize(gw, svc, &b, BatchStatus::Expired).await?;
                }
            }
            BatchStatus::InProgress => runnable.push(b),
            BatchStatus::Finalizing => finalize(gw, svc, &b, BatchStatus::Completed).await?,
            BatchStatus::Cancelling => {
                if quiet(st, &b) {
                    finalize(gw, svc, &b, BatchStatus::Cancelled).await?;
                }
            }
            _ => {}
        }
    }
    let live: HashSet<&str> = runnable.iter().map(|b| b.id.as_str()).collect();
    st.stored_start.retain(|id, _| live.contains(id.as_str()));
    let views = schedule_all(gw, svc, st, &runnable, now_ms, tx).await?;
    svc.plans.store(Arc::new(views));
    Ok(())
}

/// No line of the batch is in flight, here or (by its lease) anywhere.
fn quiet(st: &State, b: &BatchRecord) -> bool {
    b.counts.in_flight == 0 && !st.busy.contains_key(&b.id)
}

fn measure_speed(st: &mut State, now_ms: i64) {
    let wall = Instant::now();
    if let Some((w0, p0)) = st.last {
        let dw = wall.duration_since(w0).as_secs_f64();
        if dw > 0.05 {
            let ratio = ((now_ms - p0) as f64 / 1000.0 / dw).clamp(0.001, 100_000.0);
            st.speed = if st.speed == 1.0 && ratio > 1.5 { ratio } else { 0.7 * st.speed + 0.3 * ratio };
            st.last = Some((wall, now_ms));
        }
    } else {
        st.last = Some((wall, now_ms));
    }
}

/// Adds the price history frames that arrived since the last tick to the per-node series.
fn update_history(gw: &Gateway, st: &mut State, catalog: &crate::catalog::Catalog) {
    let frames = gw.pricing.history().frames();
    let node_of: HashMap<&str, &str> = catalog
        .models
        .iter()
        .flat_map(|m| m.deployments.iter())
        .filter_map(|d| catalog.data_center_of(d).and_then(|dc| dc.price_node.as_deref()).map(|n| (d.id.as_str(), n)))
        .collect();
    let table = gw.pricing.table();
    let upto = st.history_upto;
    for f in frames.iter().filter(|f| f.t > upto) {
        let mut seen = HashSet::new();
        for p in &f.points {
            let (Some(node), Some(usd)) = (node_of.get(&*p.deployment), p.usd_per_mwh) else { continue };
            if p.stale || !seen.insert(*node) {
                continue;
            }
            let minutes = table.get(node).map_or(60, |e| e.interval_minutes);
            let series = st.history.entry((*node).to_string()).or_default();
            if series.last().is_some_and(|l| l.start == f.t) {
                series.pop();
            }
            series.push(PricePoint { start: f.t, minutes, usd_per_mwh: usd });
        }
        st.history_upto = f.t;
    }
    // Eight days are more than any forecast reads.
    let keep_from = st.history_upto - 8 * 86_400;
    for s in st.history.values_mut() {
        let cut = s.partition_point(|p| p.start < keep_from);
        s.drain(..cut);
    }
}

/// The principal a batch's lines run as: its key's, or — the key revoked — its project's.
fn principal_of(gw: &Gateway, b: &BatchRecord) -> Option<Principal> {
    let access = gw.registry.load();
    if let Some(p) = access.keys.by_id(&b.key_id) {
        return Some(p.for_batch());
    }
    let project = access.projects.get(b.project_id.as_deref()?)?;
    Some(Principal { key_name: Arc::from("batch"), key_id: Arc::from(b.key_id.as_str()), limits: None, project: Some(Arc::new(project.without_rate_limits())) })
}

async fn schedule_all(
    gw: &Arc<Gateway>,
    svc: &Arc<BatchService>,
    st: &mut State,
    runnable: &[BatchRecord],
    now_ms: i64,
    tx: &tokio::sync::mpsc::UnboundedSender<(String, Done)>,
) -> Result<HashMap<String, PlanView>, String> {
    let mut views = HashMap::new();
    if runnable.is_empty() {
        return Ok(views);
    }
    let world = gw.world.load_full();
    let catalog = &world.catalog;
    update_history(gw, st, catalog);
    let settings = &svc.settings;
    let now = now_ms.div_euclid(1000);
    let book = gw.pricing.book();
    // Batches by the base model they use.
    let mut by_model: HashMap<&str, Vec<&BatchRecord>> = HashMap::new();
    for b in runnable {
        let base = tags::parse_model(&b.model).map(|(base, _)| base).unwrap_or(&b.model);
        by_model.entry(base).or_default().push(b);
    }
    let forecasts: HashMap<String, NodeForecast> = st
        .history
        .iter()
        .map(|(node, h)| {
            let day_ahead: Vec<PricePoint> = gw
                .pricing
                .day_ahead(node)
                .into_iter()
                .map(|p| PricePoint { start: p.interval_start, minutes: p.interval_minutes, usd_per_mwh: p.usd_per_mwh })
                .collect();
            (node.clone(), NodeForecast::build(&settings.schedule.forecast, h, &day_ahead, now))
        })
        .collect();
    for (base, batches) in by_model {
        // A removed model: its batches wait, and expire at their deadline.
        let Some((index, model)) = catalog.model_indexed(base) else { continue };
        let cands = crate::routing::candidates(catalog, &book, model, index, &world.telemetry);
        let slot_wall = settings.schedule.slot_s as f64 / st.speed.max(1e-3);
        let mut sites = Vec::new();
        let mut free_now = Vec::new();
        for c in &cands {
            let dep = &model.deployments[c.deployment];
            let mine = st.in_flight.get(&dep.id).copied().unwrap_or(0);
            let service = st.service.get(&dep.id).copied().unwrap_or((c.latency_ms / 1000.0).max(0.05));
            let per_slot = f64::from(settings.concurrency) * slot_wall / service.max(1e-3);
            let room_interactive = settings.deployment_capacity.saturating_sub(c.in_flight);
            let free = if c.breaker == BreakerState::Open { 0 } else { settings.concurrency.saturating_sub(mine).min(room_interactive) };
            sites.push(Site { deployment: c.deployment, requests_per_slot: per_slot });
            free_now.push(free);
        }
        // The plan aims to finish three ticks early: work starts only at a tick, and the
        // batch is finalized at one (at 600× replay a 1 s tick is 10 trace minutes).
        let reserve = (3.0 * settings.tick.as_secs_f64() * st.speed).ceil() as i64;
        let pending: Vec<Pending> = batches
            .iter()
            .map(|b| {
                let total = b.counts.total.max(1) as f64;
                let running = b.counts.in_flight.max(i64::from(st.busy.get(&b.id).copied().unwrap_or(0)));
                Pending {
                    remaining: (b.counts.unfinished() - running).max(0) as f64,
                    created: b.created_ms.div_euclid(1000),
                    deadline: (b.expires_ms.div_euclid(1000) - reserve).max(b.created_ms.div_euclid(1000) + 1),
                    input_tokens: b.est_input_tokens / total,
                    output_tokens: b.est_output_tokens / total,
                }
            })
            .collect();
        let lookup = |node: &str| forecasts.get(node).cloned();
        let plans = schedule::decide(&settings.schedule, catalog, model, &sites, &lookup, &pending, now);
        for ((b, plan), p) in batches.iter().zip(&plans).zip(&pending) {
            views.insert(b.id.clone(), PlanView { remaining_cost: plan.cost * (1.0 - settings.discount), behind: plan.behind });
            let start_ms = plan.start.map(|s| s * 1000);
            if st.stored_start.get(&b.id) != Some(&start_ms) {
                svc.store.set_planned_start(&b.id, start_ms).await.map_err(|e| e.to_string())?;
                st.stored_start.insert(b.id.clone(), start_ms);
            }
            if p.remaining <= 0.0 {
                continue;
            }
            // Lines to start now at each site the plan uses now, within free capacity.
            let mut starts: Vec<(usize, u32)> = Vec::new();
            for (i, amount) in plan.now.iter().enumerate() {
                let want = (amount - 1e-6).ceil().max(0.0) as u32;
                let n = want.min(free_now[i]);
                if n > 0 {
                    free_now[i] -= n;
                    starts.push((i, n));
                }
            }
            let total: u32 = starts.iter().map(|s| s.1).sum();
            if total == 0 {
                continue;
            }
            let Some(principal) = principal_of(gw, b) else {
                tracing::warn!(batch = %b.id, "batch runner: the batch's key and project are gone; its lines wait until it expires");
                continue;
            };
            let wall_now = crate::clock::now_ms();
            let leased = svc
                .store
                .lease_lines(&b.id, total, &svc.instance, wall_now, wall_now + settings.lease.as_millis() as i64)
                .await
                .map_err(|e| e.to_string())?;
            let mut leased = leased.into_iter();
            for (i, n) in starts {
                let site = sites[i].deployment;
                let dep_id = model.deployments[site].id.clone();
                for line in leased.by_ref().take(n as usize) {
                    *st.in_flight.entry(dep_id.clone()).or_default() += 1;
                    *st.busy.entry(b.id.clone()).or_default() += 1;
                    let job = LineJob {
                        gw: gw.clone(),
                        svc: svc.clone(),
                        principal: principal.clone(),
                        batch_id: b.id.clone(),
                        sites: vec![site],
                        deployment: dep_id.clone(),
                        line,
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let (batch, done) = job.run().await;
                        let _ = tx.send((batch, done));
                    });
                }
            }
        }
    }
    Ok(views)
}

/// One line to send.
struct LineJob {
    gw: Arc<Gateway>,
    svc: Arc<BatchService>,
    principal: Principal,
    batch_id: String,
    sites: Vec<usize>,
    /// The planned site's deployment id (capacity accounting).
    deployment: String,
    line: LeasedLine,
}

impl LineJob {
    async fn run(self) -> (String, Done) {
        let started = Instant::now();
        // Counted as a request in flight: a graceful shutdown waits for it.
        let _guard = self.gw.enter();
        let result = if self.line.attempts > self.svc.settings.max_attempts {
            // Leased this often without a stored result: every instance sending it stopped
            // (crashed) first. Not sent again.
            let message = format!("Sent {} times without an answer being stored; not sent again.", self.line.attempts - 1);
            Some(LineResult {
                line: self.line.line,
                ok: false,
                output: objects::unanswered_line(&self.batch_id, self.line.line, &self.line.custom_id, "too_many_attempts", &message),
                cost: 0.0,
                energy_cost: 0.0,
                site: None,
                finished_ms: crate::clock::now_ms(),
            })
        } else {
            self.send().await
        };
        let outcome = match &result {
            Some(r) if r.ok => "completed",
            Some(_) => "failed",
            None => "retried",
        };
        self.gw.metrics.batch_lines.with_label_values(&[outcome]).inc();
        let stored = match result {
            Some(r) => self.svc.store.finish_line(&self.batch_id, &r).await.map(|_| ()),
            // Worth another try later: the line goes back to the queue.
            None => self.svc.store.release_lines(&self.batch_id, &[self.line.line], &self.svc.instance).await,
        };
        if let Err(e) = stored {
            // The lease runs out and the line is sent again: at most this line twice.
            tracing::warn!(batch = %self.batch_id, line = self.line.line, error = %e, "batch line result not stored");
        }
        (self.batch_id, Done { deployment: self.deployment, took: started.elapsed() })
    }

    /// Sends the line; `None` when the failure is worth retrying later (a 429 other than a
    /// spent budget, or a 5xx: no deployment could answer).
    async fn send(&self) -> Option<LineResult> {
        let gw = &self.gw;
        let world = gw.world.load_full();
        let body = self.line.body.as_bytes().to_vec();
        let mut rec = Record::new();
        let mut io = Capture::default();
        let head = RequestHead {
            method: http::Method::POST,
            path: "/v1/chat/completions".into(),
            query: None,
            authorization: None,
            api_key: None,
            if_none_match: None,
            content_length: Some(body.len() as u64),
            content_type: Some("application/json".into()),
            explain: false,
            anthropic_beta: None,
        };
        match chat::inspect(&body) {
            Ok(req) => {
                rec.principal = Some(self.principal.clone());
                rec.key_name = Some(self.principal.key_name.clone());
                let exchange = Exchange {
                    req,
                    body,
                    native: None,
                    answer_as: AnswerAs::OpenAi,
                    batch: Some(BatchRun { sites: self.sites.clone(), discount: self.svc.settings.discount }),
                };
                let _ = serve(gw, &world, &self.principal, &head, exchange, &mut io, &mut rec).await;
            }
            Err(e) => {
                let _ = crate::proxy::send_error(&mut io, &mut rec, &e).await;
            }
        }
        crate::proxy::finish::finish(gw, Surface::Api, &rec, "POST", "/v1/batches (line)");
        let status = io.status;
        let body: serde_json::Value = serde_json::from_slice(&io.body).unwrap_or_else(|_| serde_json::json!({"error": {"message": "unreadable answer", "code": "invalid_answer"}}));
        // A spent budget is final for the line; other 429s and 5xx say the deployments are
        // busy or down, not that the line is bad: it waits for another try (the breakers keep
        // the scheduler off a dead site), and its deadline bounds the waiting.
        let spent = body["error"]["code"] == "insufficient_quota";
        if (status == 429 && !spent) || status >= 500 {
            return None;
        }
        let ok = (200..300).contains(&status);
        Some(LineResult {
            line: self.line.line,
            ok,
            output: objects::answer_line(&rec.request_id, &self.line.custom_id, status, body),
            cost: rec.cost.as_ref().map_or(0.0, |c| c.total),
            energy_cost: rec.cost.as_ref().map_or(0.0, |c| c.energy),
            site: rec.data_center.clone().or(rec.deployment.clone()),
            finished_ms: crate::clock::now_ms(),
        })
    }
}

/// Ends a batch: unfinished lines become error lines (`batch_expired`, `batch_cancelled`),
/// the output and error files are written, and the status moves on. Safe to repeat and to
/// race: file ids are the batch's own, and every status change is conditional.
async fn finalize(gw: &Gateway, svc: &BatchService, b: &BatchRecord, to: BatchStatus) -> Result<(), String> {
    let err = |e: crate::batch::BatchStoreError| e.to_string();
    let now = gw.pricing.clock().now_ms();
    let store = &svc.store;
    let (code, message) = match to {
        BatchStatus::Expired => ("batch_expired", "This request could not be executed before the completion window expired."),
        BatchStatus::Cancelled => ("batch_cancelled", "This request was not executed because the batch was cancelled."),
        _ => ("", ""),
    };
    if !code.is_empty() {
        for (line, custom_id) in store.unfinished_lines(&b.id).await.map_err(err)? {
            let output = objects::unanswered_line(&b.id, line, &custom_id, code, message);
            let r = LineResult { line, ok: false, output, cost: 0.0, energy_cost: 0.0, site: None, finished_ms: crate::clock::now_ms() };
            store.finish_line(&b.id, &r).await.map_err(err)?;
        }
    }
    if to == BatchStatus::Completed && b.status == BatchStatus::InProgress {
        // Only one instance gets past this: the others see it finalizing.
        if !store.transition(&b.id, &[BatchStatus::InProgress], BatchStatus::Finalizing, now, &Transition::default()).await.map_err(err)? {
            return Ok(());
        }
    }
    let lines = store.finished_lines(&b.id).await.map_err(err)?;
    let join = |ok: bool| {
        let mut s = String::new();
        for l in lines.iter().filter(|l| l.ok == ok) {
            s.push_str(&l.output);
            s.push('\n');
        }
        s
    };
    let suffix = b.id.trim_start_matches("batch_");
    let mut change = Transition::default();
    for (ok, id, name) in [(true, format!("file-{suffix}-output"), "output"), (false, format!("file-{suffix}-errors"), "errors")] {
        let content = join(ok);
        if content.is_empty() {
            continue;
        }
        let file = FileObject {
            id: id.clone(),
            owner: b.owner.clone(),
            purpose: PURPOSE_OUTPUT.into(),
            filename: format!("{}_{name}.jsonl", b.id),
            bytes: content.len() as i64,
            created_ms: crate::clock::now_ms(),
            lines: content.lines().count() as i64,
        };
        if let Err(e) = store.insert_file(&file, content).await {
            // Written already (a repeat, or another instance): fine if it is there.
            if store.file(&b.owner, &id).await.map_err(err)?.is_none() {
                return Err(e.to_string());
            }
        }
        if ok {
            change.output_file_id = Some(id);
        } else {
            change.error_file_id = Some(id);
        }
    }
    let from = match to {
        BatchStatus::Completed => BatchStatus::Finalizing,
        BatchStatus::Expired => BatchStatus::InProgress,
        _ => BatchStatus::Cancelling,
    };
    if store.transition(&b.id, &[from], to, now, &change).await.map_err(err)? {
        gw.metrics.batches_ended.with_label_values(&[to.as_str()]).inc();
        tracing::info!(batch = %b.id, status = to.as_str(), lines = b.counts.total, cost_usd = b.cost, "batch ended");
    }
    Ok(())
}
