//! Per-request cost of the access path: `Authorization` header → SHA-256 → snapshot lookup →
//! model allow-list → rate limits and budget (what `proxy::chat` does before routing).
//!
//! The snapshot holds 10 000 keys in 100 projects, every key and project with requests- and
//! tokens-per-minute limits and every project with a budget, all set high enough never to
//! refuse, so each iteration runs every check to the end. `cargo bench --bench access`.

use std::hint::black_box;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use joule::secret::KeyHash;
use joule::access::limits;
use joule::access::Access;
use joule::store::{ApiKey, BudgetPeriod, Directory, Project};

const KEYS: usize = 10_000;
const PROJECTS: usize = 100;

fn snapshot() -> (ArcSwap<Access>, Vec<String>) {
    let projects: Vec<Project> = (0..PROJECTS)
        .map(|i| Project {
            id: format!("proj_{i:016x}"),
            name: format!("project-{i}"),
            allowed_models: Some(vec!["llama-3.1-8b-instruct".into(), "gpt-4o-mini".into()]),
            default_strategy: Some("price".into()),
            rpm: Some(u32::MAX),
            tpm: Some(u32::MAX),
            budget_usd: Some(1e9),
            budget_period: BudgetPeriod::Month,
            created_at: 0,
            updated_at: 0,
        })
        .collect();
    let secrets: Vec<String> = (0..KEYS).map(|i| format!("sk-joule-{i:048x}")).collect();
    let keys = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| ApiKey {
            id: format!("key_{i:016x}"),
            name: format!("key-{i}"),
            prefix: s[..17].to_string(),
            project_id: Some(projects[i % PROJECTS].id.clone()),
            project: None,
            rpm: Some(u32::MAX),
            tpm: Some(u32::MAX),
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
            hash: KeyHash::of(s).to_hex(),
        })
        .collect();
    let dir = Directory { seq: 1, projects, keys };
    (ArcSwap::from_pointee(Access::build(&dir, &[], &Access::default(), None)), secrets)
}

fn bench(c: &mut Criterion) {
    let (access, secrets) = snapshot();
    let headers: Vec<Vec<u8>> = secrets.iter().map(|s| format!("Bearer {s}").into_bytes()).collect();
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 7919) % KEYS;
        i
    };

    c.bench_function("key lookup (sha-256 + snapshot)", |b| {
        b.iter(|| {
            let h = &headers[next()];
            black_box(access.load().keys.authenticate(Some(black_box(h))).is_ok())
        })
    });

    let (access2, _) = snapshot();
    let mut j = 0usize;
    c.bench_function("key lookup + allow-list + limits + budget", |b| {
        b.iter(|| {
            j = (j + 7919) % KEYS;
            let p = access2.load().keys.authenticate(Some(black_box(&headers[j]))).expect("known key");
            assert!(p.may_use("llama-3.1-8b-instruct"));
            black_box(limits::admit(&p, joule::clock::now_ns(), joule::clock::now_ms()).is_ok())
        })
    });

    let (access3, _) = snapshot();
    let p = access3.load().keys.authenticate(Some(&headers[0])).expect("known key");
    c.bench_function("limits + budget only", |b| {
        b.iter(|| black_box(limits::admit(black_box(&p), joule::clock::now_ns(), joule::clock::now_ms()).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
