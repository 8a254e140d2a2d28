//! The store contract, run unchanged against both backends: SQLite (a file in a temporary
//! directory) and PostgreSQL (a throwaway cluster, see `common::pg`): projects, keys, usage
//! records, the price history (directly and as the gateway's history store), kept responses,
//! and the batch API's files, batches and line leases.

mod common;

use std::sync::Arc;

use joule::secret::KeyHash;
use joule::pricing::history::{Frame, FramePoint, History};
use joule::store::{
    BudgetPeriod, Cursor, KeptResponse, NewKey, ProjectChanges, Store, StoreError, StoreLocation, UsageFilter, KEY_PREFIX,
};
use joule::batch::{
    BatchRecord, BatchStatus, BatchStore, BatchStoreError, FileObject, FinishedLine, LeasedLine, LineCounts, LineResult, NewLine, Transition, PURPOSE_BATCH,
    PURPOSE_OUTPUT,
};
use joule::usage::UsageRecord;

fn changes() -> ProjectChanges {
    ProjectChanges::default()
}

fn record(id: usize, project: Option<&str>, key: &str, model: &str, status: u16, ts: i64, instance: &str) -> UsageRecord {
    UsageRecord {
        id: format!("req_{id:06}"),
        ts_ms: ts,
        instance: instance.into(),
        project_id: project.map(str::to_string),
        key_id: Some(key.into()),
        key_name: Some("k".into()),
        model: Some(model.into()),
        strategy: Some("price".into()),
        deployment: Some("dep0".into()),
        data_center: Some("dc0".into()),
        status,
        outcome: if status == 200 { "ok".into() } else { "upstream_failed".into() },
        stream: id.is_multiple_of(2),
        ttft_ms: Some(12.5),
        latency_ms: 40.25,
        tokens_in: Some(10),
        tokens_out: Some(20),
        price_input: Some(1.0),
        price_output: Some(2.0),
        cost_input: 1e-5,
        cost_output: 4e-5,
        cost_fee: 0.0,
        cost_total: 5e-5,
    }
}

/// The whole contract. `reopen` opens the same database again (a second instance).
async fn suite(store: Store, reopen: impl Fn() -> Store) {
    // --- projects
    let seq0 = store.change_seq().await.unwrap();
    let a = store
        .create_project(
            "team-a",
            ProjectChanges {
                allowed_models: Some(Some(vec!["m2".into(), "m1".into(), "m1".into()])),
                default_strategy: Some(Some("price@latency".into())),
                rpm: Some(Some(60)),
                budget_usd: Some(Some(12.5)),
                budget_period: Some(BudgetPeriod::Day),
                ..changes()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.allowed_models.as_deref(), Some(&["m1".to_string(), "m2".to_string()][..]), "sorted, deduplicated");
    let canonical = joule::routing::tags::StrategySet::parse_list("latency@price").unwrap().to_string().replace('+', "@");
    assert_eq!(a.default_strategy.as_deref(), Some(canonical.as_str()), "stored canonically");
    assert!(store.change_seq().await.unwrap() > seq0, "a change bumps the sequence");
    assert_eq!(store.project("team-a").await.unwrap(), a);
    let b = store.create_project("team-b", changes()).await.unwrap();
    assert_eq!(b.allowed_models, None);
    assert_eq!(b.budget_period, BudgetPeriod::Month);

    assert!(matches!(store.create_project("team-a", changes()).await, Err(StoreError::Duplicate(_))));
    assert!(matches!(store.project("nope").await, Err(StoreError::NotFound(_))));

    // Bad input: SQL-looking strings, long names, bad numbers — refused, nothing written.
    let sql = "x'); DROP TABLE projects; --";
    let long = "a".repeat(65);
    for name in [sql, long.as_str(), "", " team"] {
        assert!(matches!(store.create_project(name, changes()).await, Err(StoreError::Invalid(_))), "{name}");
    }
    for bad in [
        ProjectChanges { allowed_models: Some(Some(vec![sql.into()])), ..changes() },
        ProjectChanges { default_strategy: Some(Some(sql.into())), ..changes() },
        // A well-formed but unknown tag is accepted: operators deploy strategy plugins at run
        // time, so whether a tag exists is checked per request (400 listing the loaded ones).
        ProjectChanges { default_strategy: Some(Some("Cheap!".into())), ..changes() },
        ProjectChanges { rpm: Some(Some(0)), ..changes() },
        ProjectChanges { budget_usd: Some(Some(f64::NAN)), ..changes() },
        ProjectChanges { budget_usd: Some(Some(-1.0)), ..changes() },
        ProjectChanges { name: Some(sql.into()), ..changes() },
    ] {
        assert!(matches!(store.create_project("fine", bad.clone()).await, Err(StoreError::Invalid(_))), "{bad:?}");
        assert!(matches!(store.update_project("team-a", bad.clone()).await, Err(StoreError::Invalid(_))), "{bad:?}");
    }
    assert_eq!(store.projects().await.unwrap().len(), 2, "nothing partially written");
    assert_eq!(store.project("team-a").await.unwrap(), a, "unchanged");

    // Update: rename, clear, and a rename onto an existing name that changes nothing.
    let a2 = store
        .update_project("team-a", ProjectChanges { name: Some("team-a2".into()), rpm: Some(None), tpm: Some(Some(1000)), ..changes() })
        .await
        .unwrap();
    assert_eq!((a2.id.as_str(), a2.name.as_str(), a2.rpm, a2.tpm), (a.id.as_str(), "team-a2", None, Some(1000)));
    assert_eq!(a2.created_at, a.created_at);
    assert!(matches!(
        store.update_project("team-a2", ProjectChanges { name: Some("team-b".into()), tpm: Some(Some(5)), ..changes() }).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(store.project("team-a2").await.unwrap().tpm, Some(1000), "failed update left nothing behind");
    assert!(matches!(store.update_project("ghost", changes()).await, Err(StoreError::NotFound(_))));
    let a = store.update_project("team-a2", ProjectChanges { name: Some("team-a".into()), ..changes() }).await.unwrap();

    // --- keys
    let (k1, secret) = store
        .create_key(NewKey { name: "dev-key".into(), project: Some("team-a".into()), rpm: Some(10), tpm: None })
        .await
        .unwrap();
    assert!(secret.expose().starts_with(KEY_PREFIX) && secret.expose().len() >= KEY_PREFIX.len() + 32);
    assert!(secret.expose().starts_with(&k1.prefix) && k1.prefix.len() < secret.expose().len());
    assert_eq!(k1.hash, KeyHash::of(secret.expose()).to_hex(), "only the hash is kept");
    assert_eq!((k1.project.as_deref(), k1.project_id.as_deref()), (Some("team-a"), Some(a.id.as_str())));
    let (k2, _) = store.create_key(NewKey { name: "n8n-workflow".into(), ..NewKey::default() }).await.unwrap();
    assert_eq!(k2.project, None);

    assert!(matches!(store.create_key(NewKey { name: "dev-key".into(), ..NewKey::default() }).await, Err(StoreError::Duplicate(_))));
    assert!(matches!(
        store.create_key(NewKey { name: "orphan".into(), project: Some("ghost".into()), ..NewKey::default() }).await,
        Err(StoreError::NotFound(_))
    ));
    for bad in [sql, long.as_str()] {
        assert!(matches!(store.create_key(NewKey { name: bad.into(), ..NewKey::default() }).await, Err(StoreError::Invalid(_))));
        assert!(matches!(
            store.create_key(NewKey { name: "x".into(), project: Some(bad.into()), ..NewKey::default() }).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(store.revoke_key(bad).await.is_err());
    }
    assert_eq!(store.keys(None).await.unwrap().len(), 2, "refused keys were not written");
    let of_a = store.keys(Some("team-a")).await.unwrap();
    assert_eq!(of_a.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [k1.id.as_str()]);
    assert!(matches!(store.keys(Some("ghost")).await, Err(StoreError::NotFound(_))));

    // A project with active keys cannot be deleted.
    assert!(matches!(store.delete_project("team-a").await, Err(StoreError::Conflict(_))));

    // The directory (what gateways build their snapshot from) sees only active keys.
    let dir = store.directory().await.unwrap();
    assert_eq!((dir.projects.len(), dir.keys.len()), (2, 2));
    let revoked = store.revoke_key("dev-key").await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(store.revoke_key("dev-key").await, Err(StoreError::NotFound(_))), "already revoked");
    let dir2 = store.directory().await.unwrap();
    assert!(dir2.seq > dir.seq);
    assert_eq!(dir2.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [k2.id.as_str()]);
    // The name of a revoked key can be used again; the revoked key stays listed.
    let (k3, _) = store.create_key(NewKey { name: "dev-key".into(), project: Some("team-a".into()), ..NewKey::default() }).await.unwrap();
    assert_eq!(store.keys(Some("team-a")).await.unwrap().len(), 2);
    store.revoke_key(&k3.id).await.unwrap();
    store.delete_project("team-a").await.unwrap();
    assert!(matches!(store.project("team-a").await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete_project("team-a").await, Err(StoreError::NotFound(_))));
    let a = store.create_project("team-a", changes()).await.unwrap();

    // --- usage records
    let t0 = 1_700_000_000_000_i64;
    let mut recs = Vec::new();
    for i in 0..250 {
        let (project, key) = if i % 5 == 0 { (Some(b.id.as_str()), "key_b") } else { (Some(a.id.as_str()), "key_a") };
        let model = if i % 2 == 0 { "m1" } else { "m2" };
        let status = if i % 10 == 9 { 502 } else { 200 };
        let instance = if i < 100 { "gw_me" } else { "gw_other" };
        recs.push(record(i, project, key, model, status, t0 + i as i64 * 10, instance));
    }
    recs.push(record(999, None, "config:ops", "m1", 200, t0 + 5, "gw_me"));
    store.insert_usage(Arc::new(recs.clone())).await.unwrap();
    // Replaying (spill file after a timeout whose insert did commit) never duplicates.
    store.insert_usage(Arc::new(recs[..120].to_vec())).await.unwrap();

    let all = UsageFilter { limit: 10_000, ..UsageFilter::default() };
    let page = store.usage(all.clone()).await.unwrap();
    assert_eq!(page.records.len(), 251);
    assert!(page.next_cursor.is_none());
    let back = page.records.iter().find(|r| r.id == "req_000007").unwrap();
    assert_eq!(back, &recs[7], "every field round-trips");
    assert!(page.records.windows(2).all(|w| (w[0].ts_ms, &w[0].id) >= (w[1].ts_ms, &w[1].id)), "newest first");

    let by = |f: UsageFilter| {
        let s = store.clone();
        async move { s.usage(UsageFilter { limit: 10_000, ..f }).await.unwrap().records }
    };
    let of_b = by(UsageFilter { project_id: Some(b.id.clone()), ..all.clone() }).await;
    assert_eq!(of_b.len(), 50);
    assert!(of_b.iter().all(|r| r.project_id.as_deref() == Some(b.id.as_str())), "isolation: only that project's records");
    assert_eq!(by(UsageFilter { key_id: Some("key_a".into()), model: Some("m1".into()), ..all.clone() }).await.len(), 100);
    assert_eq!(by(UsageFilter { status: Some(502), ..all.clone() }).await.len(), 25);
    let window = by(UsageFilter { since_ms: Some(t0 + 100), until_ms: Some(t0 + 200), ..all.clone() }).await;
    assert_eq!(window.len(), 10);
    assert!(matches!(store.usage(UsageFilter { model: Some("' OR '1'='1".into()), ..all.clone() }).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.usage(UsageFilter { limit: 0, ..all.clone() }).await, Err(StoreError::Invalid(_))));
    assert!(matches!(
        store.usage(UsageFilter { since_ms: Some(5), until_ms: Some(1), ..all.clone() }).await,
        Err(StoreError::Invalid(_))
    ));

    // Pagination: pages of 40 cover every record exactly once, also across equal timestamps.
    store.insert_usage(Arc::new(vec![record(1000, None, "k", "m1", 200, t0, "gw_me"), record(1001, None, "k", "m1", 200, t0, "gw_me")])).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = store.usage(UsageFilter { limit: 40, after: cursor.clone(), ..UsageFilter::default() }).await.unwrap();
        seen.extend(p.records.iter().map(|r| r.id.clone()));
        match p.next_cursor {
            Some(c) => cursor = Some(Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!((total, seen.len()), (253, 253));

    let sum = store.usage_summary(UsageFilter { project_id: Some(a.id.clone()), ..all.clone() }).await.unwrap();
    assert_eq!((sum.requests, sum.tokens_in, sum.tokens_out), (200, 2000, 4000));
    assert!((sum.cost_usd - 200.0 * 5e-5).abs() < 1e-9, "{sum:?}");

    // The same per 1-second bucket (records of project a every 10 ms from t0, 4 in 5).
    let of_a = UsageFilter { project_id: Some(a.id.clone()), since_ms: Some(t0), ..all.clone() };
    let series = store.usage_series(of_a.clone(), 1000, t0 + 10_000).await.unwrap();
    let counts: Vec<(i64, u64, u64)> = series.iter().map(|b| (b.t - t0, b.totals.requests, b.totals.tokens_in)).collect();
    assert_eq!(counts, vec![(0, 80, 800), (1000, 80, 800), (2000, 40, 400)]);
    assert!((series.iter().map(|b| b.totals.cost_usd).sum::<f64>() - sum.cost_usd).abs() < 1e-9, "{series:?}");
    assert!(store.usage_series(UsageFilter { since_ms: Some(t0 + 1500), ..of_a.clone() }, 1000, t0 + 10_000).await.unwrap()[0].t == t0 + 1000, "buckets align to the step");
    assert!(matches!(store.usage_series(UsageFilter { since_ms: None, ..of_a.clone() }, 1000, t0).await, Err(StoreError::Invalid(_))), "needs since");
    assert!(matches!(store.usage_series(of_a.clone(), 1000, t0 + 2_000_000).await, Err(StoreError::Invalid(_))), "too many buckets");
    assert!(matches!(store.usage_series(of_a.clone(), 999, t0 + 10_000).await, Err(StoreError::Invalid(_))), "step under a second");

    // Budgets read other instances' spend only.
    let spend = store.spend_since(t0, "gw_me").await.unwrap();
    let spend_a = spend.iter().find(|(p, _)| *p == a.id).map(|(_, s)| *s).unwrap();
    assert!((spend_a - 120.0 * 5e-5).abs() < 1e-9, "{spend:?}");
    assert!(store.spend_since(t0 + 1_000_000, "gw_me").await.unwrap().is_empty());

    // Last-used times only move forward.
    store.touch_keys(vec![(k2.id.clone(), 50), (k2.id.clone(), 40)]).await.unwrap();
    store.touch_keys(vec![(k2.id.clone(), 30)]).await.unwrap();
    let k2b = store.keys(None).await.unwrap().into_iter().find(|k| k.id == k2.id).unwrap();
    assert_eq!(k2b.last_used_at, Some(50));

    // A second instance on the same database: migrations are not re-run, data is shared.
    let other = reopen();
    assert_eq!(other.projects().await.unwrap().len(), 2);
    assert_eq!(other.change_seq().await.unwrap(), store.change_seq().await.unwrap());
}

fn point(deployment: &str, input: f64, usd_per_mwh: Option<f64>, stale: bool) -> FramePoint {
    FramePoint { deployment: deployment.into(), input, output: input * 2.0, usd_per_mwh, stale }
}

/// A frame at `t` with three deployments: two hosted (one stale, one at a negative energy
/// price), one provider route (no energy price), and a deployment id that looks like SQL.
fn price_frame(t: i64, v: f64) -> Arc<Frame> {
    Arc::new(Frame {
        t,
        points: vec![
            point("dep-a", v, Some(v * 100.0), false),
            point("dep-b", v + 0.5, Some(-12.5), true),
            point("x'); DROP TABLE price_history; --", 1.05, None, false),
        ],
    })
}

/// Points in the order loads return them: by deployment id.
fn sorted(f: &Frame) -> Frame {
    let mut f = f.clone();
    f.points.sort_by(|a, b| a.deployment.cmp(&b.deployment));
    f
}

/// The price history part of the contract. `reopen` opens the same database again.
async fn history_suite(store: Store, reopen: impl Fn() -> Store) {
    let t0 = 1_700_000_000_i64;
    assert!(store.price_frames(0, i64::MAX).await.unwrap().is_empty());
    // 300 frames of 3 deployments: several multi-row inserts in one append.
    let frames: Vec<Arc<Frame>> = (0..300).map(|k| price_frame(t0 + 300 * k, k as f64)).collect();
    store.append_price_frames(frames.clone()).await.unwrap();
    let back = store.price_frames(0, i64::MAX).await.unwrap();
    assert_eq!(back.len(), 300);
    assert_eq!(back[7], sorted(&frames[7]), "every field round-trips, points ordered by deployment");
    assert!(back.windows(2).all(|w| w[0].t < w[1].t), "oldest first");
    let since = store.price_frames(t0 + 300 * 290, i64::MAX).await.unwrap();
    assert_eq!((since.len(), since[0].t), (10, t0 + 300 * 290), "the lower bound is inclusive");
    let between = store.price_frames(t0 + 300, t0 + 300 * 3).await.unwrap();
    assert_eq!(between.iter().map(|f| f.t).collect::<Vec<_>>(), [t0 + 300, t0 + 600, t0 + 900], "so is the upper");

    // A second instance on the same database appends the same frames (and a newer state for
    // one of them): loads see each time once, with the state written last.
    let other = reopen();
    let mut changed = (*price_frame(t0 + 300 * 5, 99.0)).clone();
    changed.points.truncate(1);
    other.append_price_frames(vec![frames[4].clone(), Arc::new(changed), frames[6].clone()]).await.unwrap();
    let back = store.price_frames(0, i64::MAX).await.unwrap();
    assert_eq!(back.len(), 300, "no duplicate frames");
    assert_eq!(back[5].points.len(), 3);
    assert_eq!(back[5].points[0], point("dep-a", 99.0, Some(9900.0), false), "replaced by the later write");
    assert_eq!(back[5].points[1], sorted(&frames[5]).points[1], "other deployments of that frame kept");
    // Two frames at the same second in one append: the later one is the state in force.
    let late = t0 + 300 * 400;
    store.append_price_frames(vec![price_frame(late, 1.0), price_frame(late, 2.0)]).await.unwrap();
    let last = store.price_frames(late, i64::MAX).await.unwrap();
    assert_eq!(last, vec![sorted(&price_frame(late, 2.0))]);

    // Bad input is refused and nothing of the batch is written.
    let bad_price = Arc::new(Frame { t: late + 300, points: vec![point("dep-a", f64::NAN, None, false)] });
    let bad_mwh = Arc::new(Frame { t: late + 300, points: vec![point("dep-a", 1.0, Some(f64::INFINITY), false)] });
    let bad_id = Arc::new(Frame { t: late + 300, points: vec![point("", 1.0, None, false)] });
    let bad_t = price_frame(-1, 1.0);
    for bad in [bad_price, bad_mwh, bad_id, bad_t] {
        let r = store.append_price_frames(vec![price_frame(late + 600, 1.0), bad]).await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    }
    assert_eq!(store.price_frames(late + 1, i64::MAX).await.unwrap(), vec![], "nothing partially written");
    store.append_price_frames(Vec::new()).await.unwrap();

    // Retention: frames older than the cutoff go, the rest stays.
    let deleted = store.delete_price_frames_before(t0 + 300 * 100).await.unwrap();
    assert_eq!(deleted, 100 * 3);
    let kept = other.price_frames(0, i64::MAX).await.unwrap();
    assert_eq!((kept.len(), kept[0].t), (201, t0 + 300 * 100));
    assert_eq!(store.delete_price_frames_before(t0 + 300 * 100).await.unwrap(), 0);
    assert_eq!(store.delete_price_frames_before(i64::MAX).await.unwrap(), 201 * 3);
}

/// The gateway's price history through the store ([`joule::pricing::history::HistoryStore`]
/// for `Store`): frames recorded by one process are there for the next, expired ones are
/// deleted at start. Runs outside any runtime, as the history writer thread does.
fn history_through_the_store(store: &Store) {
    let t0 = 1_700_000_000_i64;
    {
        let h = History::with_store(Box::new(store.clone()), 7, t0).unwrap();
        for k in 0..10 {
            h.record((*price_frame(t0 + 300 * k, k as f64)).clone());
        }
        h.flush();
    }
    let h = History::with_store(Box::new(store.clone()), 7, t0 + 3000).unwrap();
    let frames = h.frames();
    assert_eq!(frames.len(), 10);
    assert_eq!(*frames[3], sorted(&price_frame(t0 + 900, 3.0)));
    drop(h);
    // A clock before the last frames (a replay started again): later frames are not loaded.
    let h = History::with_store(Box::new(store.clone()), 7, t0 + 1000).unwrap();
    assert_eq!(h.frames().iter().map(|f| f.t).collect::<Vec<_>>(), [t0, t0 + 300, t0 + 600, t0 + 900]);
    drop(h);
    // Eight days later the start drops everything expired, in memory and in the database.
    let h = History::with_store(Box::new(store.clone()), 7, t0 + 8 * 86_400).unwrap();
    assert!(h.frames().is_empty());
    assert!(store.wait(store.price_frames(0, i64::MAX)).unwrap().is_empty());
}

/// Records with absurd numbers (the maximal token counts and costs an unvalidated upstream
/// report could leave behind) never make a listing, a summary or a budget read fail.
async fn extreme_suite(store: Store) {
    let t0 = 1_900_000_000_000;
    let extreme = |id: usize, cost: f64| UsageRecord {
        model: Some("m_extreme".into()),
        tokens_in: Some(u64::MAX),
        tokens_out: Some(u64::MAX),
        cost_input: cost,
        cost_output: cost,
        cost_total: cost,
        ..record(id, Some("p_extreme"), "key_x", "m_extreme", 200, t0 + id as i64, "gw_other")
    };
    let recs = vec![extreme(5000, f64::MAX), extreme(5001, f64::MAX), extreme(5002, 1.8e13), extreme(5003, -f64::MAX)];
    store.insert_usage(Arc::new(recs)).await.unwrap();

    let mine = UsageFilter { model: Some("m_extreme".into()), limit: 100, ..UsageFilter::default() };
    let listed = store.usage(mine.clone()).await.unwrap().records;
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|r| r.tokens_in == Some(i64::MAX as u64)), "stored saturated: {listed:?}");
    for filter in [mine, UsageFilter { project_id: Some("p_extreme".into()), ..UsageFilter::default() }, UsageFilter::default()] {
        let sum = store.usage_summary(filter.clone()).await.unwrap();
        assert!(sum.requests >= 4 && sum.tokens_in == u64::MAX && sum.tokens_out == u64::MAX, "{filter:?}: {sum:?}");
        assert!(sum.cost_usd.is_finite() && sum.cost_usd >= 1.8e13 && sum.cost_usd <= 3e15 + 1.0, "{filter:?}: {sum:?}");
    }
    let spend = store.spend_since(t0, "gw_me").await.unwrap();
    let (_, x) = spend.iter().find(|(p, _)| p == "p_extreme").unwrap();
    assert!(x.is_finite() && *x <= 3e15 + 1.0, "{spend:?}");
}

/// Kept Responses API responses: read back by their owner only, until they expire; deleted
/// by their owner only; a second write of an id keeps the first; expired ones are dropped.
async fn responses_suite(store: Store, reopen: impl Fn() -> Store) {
    let kept = |id: &str, owner: &str, created: i64, expires: i64| KeptResponse {
        id: id.into(),
        owner: owner.into(),
        created_ms: created,
        expires_ms: expires,
        object: format!(r#"{{"id":"{id}","text":"hé "q""}}"#),
        conversation: r#"[{"role":"user","content":"hi"}]"#.into(),
    };
    store.insert_response(kept("resp_a", "project:p1", 1_000, 10_000)).await.unwrap();
    store.insert_response(kept("resp_b", "key:k1", 1_000, 2_000)).await.unwrap();
    let (object, conv) = store.response("resp_a", "project:p1", 5_000).await.unwrap().expect("kept");
    assert_eq!(object, r#"{"id":"resp_a","text":"hé "q""}"#);
    assert_eq!(conv, r#"[{"role":"user","content":"hi"}]"#);
    assert_eq!(store.response("resp_a", "project:p2", 5_000).await.unwrap(), None, "another project");
    assert_eq!(store.response("resp_a", "key:k1", 5_000).await.unwrap(), None, "a key outside it");
    assert_eq!(store.response("resp_b", "key:k1", 2_000).await.unwrap(), None, "expired");
    assert_eq!(store.response("resp_none", "project:p1", 5_000).await.unwrap(), None);
    // The same id again does not overwrite.
    let mut again = kept("resp_a", "project:p2", 1_500, 10_000);
    again.object = "{}".into();
    store.insert_response(again).await.unwrap();
    assert!(store.response("resp_a", "project:p1", 5_000).await.unwrap().is_some());
    assert!(!store.delete_response("resp_a", "project:p2", 5_000).await.unwrap(), "not theirs to delete");
    // Survives a reopen; deleting is for the owner.
    let other = reopen();
    assert!(other.response("resp_a", "project:p1", 5_000).await.unwrap().is_some());
    assert!(other.delete_response("resp_a", "project:p1", 5_000).await.unwrap());
    assert!(!other.delete_response("resp_a", "project:p1", 5_000).await.unwrap());
    assert_eq!(store.response("resp_a", "project:p1", 5_000).await.unwrap(), None);
}

fn file_object(id: &str, owner: &str, purpose: &str, created_ms: i64) -> FileObject {
    FileObject { id: id.into(), owner: owner.into(), purpose: purpose.into(), filename: format!("{id}.jsonl"), bytes: 42, created_ms, lines: 3 }
}

fn batch_record(id: &str, owner: &str, created_ms: i64) -> BatchRecord {
    BatchRecord {
        id: id.into(),
        owner: owner.into(),
        project_id: owner.strip_prefix("project:").map(str::to_string),
        key_id: "key_1".into(),
        model: "llama-3.1-8b-instruct@price".into(),
        input_file_id: "file-in".into(),
        endpoint: "/v1/chat/completions".into(),
        window_s: 86_400,
        metadata: Some(r#"{"run":"nightly","q":"it's"}"#.into()),
        status: BatchStatus::Validating,
        created_ms,
        expires_ms: created_ms + 86_400_000,
        in_progress_ms: None,
        finalizing_ms: None,
        completed_ms: None,
        failed_ms: None,
        expired_ms: None,
        cancelling_ms: None,
        cancelled_ms: None,
        output_file_id: None,
        error_file_id: None,
        errors: None,
        planned_start_ms: Some(created_ms + 3_600_000),
        estimate_at_submission: 1.25,
        est_input_tokens: 1000.0,
        est_output_tokens: 2500.5,
        counts: LineCounts::default(),
        cost: 0.0,
        energy_cost: 0.0,
        sites: Vec::new(),
    }
}

fn new_lines(n: i64) -> Vec<NewLine> {
    (1..=n).map(|i| NewLine { line: i, custom_id: format!("req-{i}"), body: format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hé {i} 'q'"}}]}}"#) }).collect()
}

fn result(line: i64, ok: bool, cost: f64, energy_cost: f64, site: Option<&str>) -> LineResult {
    LineResult { line, ok, output: format!(r#"{{"custom_id":"req-{line}","ok":{ok}}}"#), cost, energy_cost, site: site.map(str::to_string), finished_ms: 1_000 + line }
}

fn ids<T>(v: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    v.iter().map(|x| id(x).to_string()).collect()
}

fn line_numbers(v: &[LeasedLine]) -> Vec<i64> {
    v.iter().map(|l| l.line).collect()
}

/// The batch API's files, batches and lines ([`BatchStore`] for `Store`): owner isolation,
/// pagination, line leases and their expiry, results stored once, counts and sums read from
/// the lines, guarded status changes; on PostgreSQL, instances leasing at once never share a
/// line.
async fn batch_suite(store: Store) {
    let (p1, p2) = ("project:p1", "key:k2");

    // --- files
    let content = "{\"custom_id\":\"a\",\"body\":\"hé 'x'\"}\n{\"custom_id\":\"b\"}\n".to_string();
    let fa = file_object("file-a", p1, PURPOSE_BATCH, 1_000);
    let fb = file_object("file-b", p1, PURPOSE_BATCH, 2_000);
    let fc = file_object("file-c", p1, PURPOSE_OUTPUT, 2_000); // same time as file-b: ordered by id
    let fd = file_object("file-d", p2, PURPOSE_BATCH, 1_500);
    for f in [&fa, &fb, &fc, &fd] {
        store.insert_file(f, format!("{}:{content}", f.id)).await.unwrap();
    }
    assert!(matches!(store.insert_file(&fa, String::new()).await, Err(BatchStoreError::Backend(_))), "duplicate id");
    assert_eq!(store.file(p1, "file-a").await.unwrap(), Some(fa.clone()), "every field round-trips");
    assert_eq!(store.file(p2, "file-a").await.unwrap(), None, "another owner's file");
    assert_eq!(store.file_content(p1, "file-a").await.unwrap(), Some(format!("file-a:{content}")));
    assert_eq!(store.file_content(p2, "file-a").await.unwrap(), None);
    assert_eq!(store.file_content(p1, "file-none").await.unwrap(), None);

    let list = |purpose: Option<&'static str>, after: Option<&'static str>, limit: u32, asc: bool| {
        let s = store.clone();
        async move { ids(&s.files(p1, purpose, after, limit, asc).await.unwrap(), |f| &f.id) }
    };
    assert_eq!(list(None, None, 10, false).await, ["file-c", "file-b", "file-a"], "newest first, ties by id");
    assert_eq!(list(None, None, 10, true).await, ["file-a", "file-b", "file-c"]);
    assert_eq!(list(None, None, 2, false).await, ["file-c", "file-b"]);
    assert_eq!(list(None, Some("file-c"), 10, false).await, ["file-b", "file-a"], "strictly after, across equal times");
    assert_eq!(list(None, Some("file-b"), 1, false).await, ["file-a"]);
    assert_eq!(list(None, Some("file-a"), 10, true).await, ["file-b", "file-c"]);
    assert_eq!(list(None, Some("file-c"), 10, true).await, Vec::<String>::new());
    assert_eq!(list(None, Some("file-none"), 10, false).await, Vec::<String>::new(), "unknown `after`");
    assert_eq!(list(None, Some("file-d"), 10, false).await, Vec::<String>::new(), "another owner's file as `after`");
    assert_eq!(list(Some(PURPOSE_BATCH), None, 10, false).await, ["file-b", "file-a"]);
    assert_eq!(list(Some(PURPOSE_OUTPUT), None, 10, false).await, ["file-c"]);
    assert_eq!(list(Some(PURPOSE_BATCH), Some("file-c"), 10, false).await, ["file-b", "file-a"]);
    // Pages of one cover the owner's files exactly once.
    let mut seen: Vec<String> = Vec::new();
    loop {
        let after = seen.last().cloned();
        let page = store.files(p1, None, after.as_deref(), 1, false).await.unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(ids(&page, |f| &f.id));
    }
    assert_eq!(seen, ["file-c", "file-b", "file-a"]);
    assert_eq!(store.files(p2, None, None, 10, false).await.unwrap(), vec![fd.clone()], "isolation");

    assert!(!store.delete_file(p2, "file-a").await.unwrap(), "not theirs to delete");
    assert!(store.file(p1, "file-a").await.unwrap().is_some());
    assert!(store.delete_file(p1, "file-a").await.unwrap());
    assert!(!store.delete_file(p1, "file-a").await.unwrap());
    assert_eq!(store.file(p1, "file-a").await.unwrap(), None);
    assert_eq!(store.file_content(p1, "file-a").await.unwrap(), None);

    // --- batches
    let b1 = batch_record("batch_1", p1, 1_000);
    let b2 = batch_record("batch_2", p1, 2_000);
    let b3 = batch_record("batch_3", p2, 1_500);
    store.insert_batch(&b1, &new_lines(4)).await.unwrap();
    store.insert_batch(&b2, &new_lines(3)).await.unwrap();
    store.insert_batch(&b3, &new_lines(5)).await.unwrap();
    assert!(matches!(store.insert_batch(&b1, &new_lines(1)).await, Err(BatchStoreError::Backend(_))), "duplicate id");
    let got = store.batch(Some(p1), "batch_1").await.unwrap().expect("stored");
    let counts = |total, completed, failed, in_flight| LineCounts { total, completed, failed, in_flight };
    assert_eq!(got, BatchRecord { counts: counts(4, 0, 0, 0), ..b1.clone() }, "every field round-trips");
    assert_eq!(store.batch(Some(p2), "batch_1").await.unwrap(), None, "another owner's batch");
    assert_eq!(store.batch(None, "batch_1").await.unwrap().map(|b| b.id), Some("batch_1".to_string()), "the scheduler reads any");
    assert_eq!(store.batch(None, "batch_none").await.unwrap(), None);
    let blist = |after: Option<&'static str>, limit: u32| {
        let s = store.clone();
        async move { ids(&s.batches(p1, after, limit).await.unwrap(), |b| &b.id) }
    };
    assert_eq!(blist(None, 10).await, ["batch_2", "batch_1"]);
    assert_eq!(blist(None, 1).await, ["batch_2"]);
    assert_eq!(blist(Some("batch_2"), 10).await, ["batch_1"]);
    assert_eq!(blist(Some("batch_1"), 10).await, Vec::<String>::new());
    assert_eq!(blist(Some("batch_3"), 10).await, Vec::<String>::new(), "another owner's batch as `after`");
    assert_eq!(blist(Some("batch_none"), 10).await, Vec::<String>::new());
    assert_eq!(ids(&store.batches(p2, None, 10).await.unwrap(), |b| &b.id), ["batch_3"]);
    let listed = store.batches(p1, None, 10).await.unwrap();
    assert_eq!((listed[0].counts, listed[1].counts), (counts(3, 0, 0, 0), counts(4, 0, 0, 0)), "counts on every listed batch");

    // --- leases (wall-clock ms)
    let now = joule::clock::now_ms();
    let until = now + 60_000;
    let a = store.lease_lines("batch_1", 2, "gw-a", now, until).await.unwrap();
    assert_eq!(a, vec![
        LeasedLine { line: 1, custom_id: "req-1".into(), body: new_lines(1)[0].body.clone(), attempts: 1 },
        LeasedLine { line: 2, custom_id: "req-2".into(), body: new_lines(2)[1].body.clone(), attempts: 1 },
    ]);
    let b = store.lease_lines("batch_1", 3, "gw-b", now, until).await.unwrap();
    assert_eq!(line_numbers(&b), [3, 4], "lowest first, never a line leased by another");
    assert!(store.lease_lines("batch_1", 3, "gw-c", now + 1, until).await.unwrap().is_empty(), "every lease holds");
    assert!(store.lease_lines("batch_1", 0, "gw-c", now, until).await.unwrap().is_empty());
    assert_eq!(store.batch(None, "batch_1").await.unwrap().unwrap().counts, counts(4, 0, 0, 4));
    assert_eq!(store.batch(None, "batch_2").await.unwrap().unwrap().counts, counts(3, 0, 0, 0), "other batches untouched");

    // Given back: pending again, the attempt not counted; only the holder can give a line back.
    store.release_lines("batch_1", &[2], "gw-a").await.unwrap();
    store.release_lines("batch_1", &[3], "gw-a").await.unwrap();
    store.release_lines("batch_1", &[], "gw-a").await.unwrap();
    assert_eq!(store.batch(None, "batch_1").await.unwrap().unwrap().counts, counts(4, 0, 0, 3));
    let unfinished: Vec<(i64, String)> = (1..=4).map(|i| (i, format!("req-{i}"))).collect();
    assert_eq!(store.unfinished_lines("batch_1").await.unwrap(), unfinished, "leased and pending lines are unfinished");
    let c = store.lease_lines("batch_1", 5, "gw-c", now, until).await.unwrap();
    assert_eq!((line_numbers(&c), c[0].attempts), (vec![2], 1), "the released line, its attempt not counted");

    // gw-a renews its lease past `until`; the others' run out: at `until + 1` another instance
    // takes their lines again, the attempt counted, and not gw-a's.
    store.renew_leases("gw-a", until + 120_000).await.unwrap();
    let d = store.lease_lines("batch_1", 10, "gw-d", until + 1, until + 60_000).await.unwrap();
    assert_eq!(line_numbers(&d), [2, 3, 4]);
    assert!(d.iter().all(|l| l.attempts == 2), "{d:?}");
    assert!(store.lease_lines("batch_1", 10, "gw-e", until + 60_001, until + 120_000).await.unwrap().iter().all(|l| l.line != 1), "a renewed lease holds");

    // --- results: stored once; counts and sums come from the lines
    assert!(store.finish_line("batch_1", &result(1, true, 0.5, 0.2, Some("dc-b"))).await.unwrap());
    assert!(!store.finish_line("batch_1", &result(1, false, 9.0, 9.0, Some("dc-x"))).await.unwrap(), "finished already");
    assert!(store.finish_line("batch_1", &result(2, false, 0.25, 0.1, Some("dc-a"))).await.unwrap());
    assert!(store.finish_line("batch_1", &result(3, true, 0.25, 0.0, None)).await.unwrap());
    assert!(store.finish_line("batch_1", &result(3, true, 0.25, 0.0, Some("dc-b"))).await.is_ok_and(|x| !x));
    let got = store.batch(Some(p1), "batch_1").await.unwrap().unwrap();
    // Line 4 is leased by gw-e until far after the wall clock: in flight.
    assert_eq!(got.counts, counts(4, 2, 1, 1));
    assert_eq!(got.counts.unfinished(), 1);
    assert!((got.cost - 1.0).abs() < 1e-12 && (got.energy_cost - 0.3).abs() < 1e-12, "{got:?}");
    assert_eq!(got.sites, ["dc-a", "dc-b"], "distinct, sorted, finished lines only");
    let finished = store.finished_lines("batch_1").await.unwrap();
    assert_eq!(finished, vec![
        FinishedLine { line: 1, custom_id: "req-1".into(), ok: true, output: result(1, true, 0.0, 0.0, None).output },
        FinishedLine { line: 2, custom_id: "req-2".into(), ok: false, output: result(2, false, 0.0, 0.0, None).output },
        FinishedLine { line: 3, custom_id: "req-3".into(), ok: true, output: result(3, true, 0.0, 0.0, None).output },
    ], "the first result kept");
    assert_eq!(store.unfinished_lines("batch_1").await.unwrap(), vec![(4, "req-4".to_string())]);
    assert!(store.lease_lines("batch_1", 10, "gw-f", i64::MAX, i64::MAX).await.unwrap().iter().all(|l| l.line == 4), "finished lines are never leased");
    assert_eq!(store.batch(None, "batch_3").await.unwrap().unwrap().counts, counts(5, 0, 0, 0));
    assert!(store.finished_lines("batch_3").await.unwrap().is_empty());
    // A lease ran out (the wall clock is past it): leased, but not in flight.
    store.lease_lines("batch_3", 1, "gw-a", now, now - 1).await.unwrap();
    assert_eq!(store.batch(None, "batch_3").await.unwrap().unwrap().counts, counts(5, 0, 0, 0));

    // --- status changes: only from the expected statuses
    let moved = |id: &'static str, from: &'static [BatchStatus], to: BatchStatus, at: i64, change: Transition| {
        let s = store.clone();
        async move { s.transition(id, from, to, at, &change).await.unwrap() }
    };
    assert!(!moved("batch_1", &[BatchStatus::InProgress], BatchStatus::Completed, 5_000, Transition { output_file_id: Some("file-o".into()), ..Transition::default() }).await);
    let still = store.batch(None, "batch_1").await.unwrap().unwrap();
    assert_eq!((still.status, still.completed_ms, still.output_file_id), (BatchStatus::Validating, None, None), "nothing changed");
    assert!(!moved("batch_1", &[], BatchStatus::InProgress, 3_000, Transition::default()).await);
    assert!(moved("batch_1", &[BatchStatus::Validating], BatchStatus::InProgress, 3_000, Transition::default()).await);
    assert!(!moved("batch_1", &[BatchStatus::Validating], BatchStatus::InProgress, 3_001, Transition::default()).await, "moved first by another");
    assert!(!moved("batch_none", &[BatchStatus::InProgress], BatchStatus::Finalizing, 4_000, Transition::default()).await);
    assert!(moved("batch_1", &[BatchStatus::InProgress, BatchStatus::Cancelling], BatchStatus::Finalizing, 4_000, Transition::default()).await);
    let change = Transition { output_file_id: Some("file-out".into()), error_file_id: Some("file-err".into()), errors: None };
    assert!(moved("batch_1", &[BatchStatus::Finalizing], BatchStatus::Completed, 5_000, change).await);
    let done = store.batch(Some(p1), "batch_1").await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.in_progress_ms, done.finalizing_ms, done.completed_ms, done.output_file_id.as_deref(), done.error_file_id.as_deref(), done.errors.as_deref()),
        (BatchStatus::Completed, Some(3_000), Some(4_000), Some(5_000), Some("file-out"), Some("file-err"), None)
    );
    assert_eq!((done.created_ms, done.failed_ms, done.counts), (1_000, None, counts(4, 2, 1, 1)), "the rest unchanged");
    let errors = r#"{"object":"list","data":[{"code":"invalid_json","line":2}]}"#;
    assert!(moved("batch_3", &[BatchStatus::Validating], BatchStatus::Failed, 1_600, Transition { errors: Some(errors.into()), ..Transition::default() }).await);
    let failed = store.batch(None, "batch_3").await.unwrap().unwrap();
    assert_eq!((failed.status, failed.failed_ms, failed.errors.as_deref(), failed.output_file_id), (BatchStatus::Failed, Some(1_600), Some(errors), None));

    store.set_planned_start("batch_2", Some(7_200_000)).await.unwrap();
    assert_eq!(store.batch(None, "batch_2").await.unwrap().unwrap().planned_start_ms, Some(7_200_000));
    store.set_planned_start("batch_2", None).await.unwrap();
    assert_eq!(store.batch(None, "batch_2").await.unwrap().unwrap().planned_start_ms, None);

    // The scheduler's work list: not terminal, oldest first, any owner.
    let b4 = BatchRecord { status: BatchStatus::Cancelling, cancelling_ms: Some(600), ..batch_record("batch_4", p2, 500) };
    store.insert_batch(&b4, &[]).await.unwrap();
    let b5 = BatchRecord { status: BatchStatus::Expired, ..batch_record("batch_5", p1, 400) };
    store.insert_batch(&b5, &new_lines(1)).await.unwrap();
    assert!(moved("batch_2", &[BatchStatus::Validating], BatchStatus::InProgress, 3_000, Transition::default()).await);
    let active = store.active_batches().await.unwrap();
    assert_eq!(ids(&active, |b| &b.id), ["batch_4", "batch_2"]);
    assert_eq!((active[0].counts, active[1].counts), (counts(0, 0, 0, 0), counts(3, 0, 0, 0)));
    assert_eq!(store.batch(None, "batch_4").await.unwrap().unwrap(), b4, "a batch without lines");

    // Instances leasing at once (PostgreSQL: connections in parallel) never share a line.
    if store.kind() == "postgres" {
        for round in 0..3 {
            let id = format!("batch_conc_{round}");
            store.insert_batch(&batch_record(&id, p1, 10_000 + round), &new_lines(20)).await.unwrap();
            let leases = (0..4).map(|i| {
                let (s, id) = (store.clone(), id.clone());
                async move { s.lease_lines(&id, 5, &format!("gw-{i}"), now, until).await.unwrap() }
            });
            let got = futures_util::future::join_all(leases).await;
            let mut all: Vec<i64> = got.iter().flat_map(|v| line_numbers(v)).collect();
            all.sort_unstable();
            assert_eq!(all, (1..=20).collect::<Vec<_>>(), "round {round}: {got:?}");
            assert_eq!(store.batch(None, &id).await.unwrap().unwrap().counts, counts(20, 0, 0, 20));
        }
    }

    // A large batch: 50 000 lines of about 100 bytes in one insert.
    let big: Vec<NewLine> = (1..=50_000)
        .map(|i| NewLine { line: i, custom_id: format!("req-{i}"), body: format!(r#"{{"model":"m","messages":[{{"role":"user","content":"line {i:08} of the big batch, padded"}}]}}"#) })
        .collect();
    assert!(big[0].body.len() >= 90);
    store.insert_batch(&batch_record("batch_big", p2, 20_000), &big).await.unwrap();
    let got = store.batch(Some(p2), "batch_big").await.unwrap().unwrap();
    assert_eq!(got.counts, counts(50_000, 0, 0, 0));
    assert_eq!(line_numbers(&store.lease_lines("batch_big", 3, "gw-a", now, until).await.unwrap()), [1, 2, 3]);
    assert_eq!(store.unfinished_lines("batch_big").await.unwrap().len(), 50_000);
}

/// Opens `loc` from a thread outside any runtime (opening blocks until migrated).
fn reopen(loc: &StoreLocation) -> Store {
    let loc = loc.clone();
    std::thread::spawn(move || Store::open(&loc).unwrap()).join().unwrap()
}

/// The whole contract on one backend: projects, keys and usage, then the price history.
fn contract(store: &Store, loc: &StoreLocation) {
    let l = loc.clone();
    store.wait(suite(store.clone(), move || reopen(&l)));
    let l = loc.clone();
    store.wait(history_suite(store.clone(), move || reopen(&l)));
    history_through_the_store(store);
    store.wait(extreme_suite(store.clone()));
    let l = loc.clone();
    store.wait(responses_suite(store.clone(), move || reopen(&l)));
    store.wait(batch_suite(store.clone()));
}

#[test]
fn sqlite_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let loc = StoreLocation::Sqlite(dir.path().join("sub/joule.db"));
    let store = Store::open(&loc).unwrap();
    assert_eq!(store.kind(), "sqlite");
    contract(&store, &loc);
}

#[test]
fn postgres_store_contract() {
    let pg = common::pg::PgCluster::start();
    let loc = StoreLocation::Postgres(joule::secret::Secret::new(pg.url()));
    // Several instances starting at once migrate exactly once.
    let opened: Vec<Store> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| Store::open(&loc).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let store = opened[0].clone();
    assert_eq!(store.kind(), "postgres");
    contract(&store, &loc);
}

#[test]
fn postgres_connection_string_errors_hide_the_password() {
    let e = Store::open(&StoreLocation::Postgres(joule::secret::Secret::new("postgres://u:hunter2@[bad".into()))).unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}
