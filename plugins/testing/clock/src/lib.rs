//! The strategy world plus an imported clock: outside the contract, so the host must refuse
//! to load it.

wit_bindgen::generate!({
    inline: r#"
    package joule:testing;

    world clock {
        record info { name: string, version: string, tag: string }
        record decision-input { now-ms: u64, seed: u64, count: u32, stride: u32, numbers: list<f64> }
        import now: func() -> u64;
        export describe: func() -> info;
        export score: func(input: decision-input) -> result<list<option<f64>>, string>;
    }
    "#,
    world: "joule:testing/clock",
});

struct Clock;

impl Guest for Clock {
    fn describe() -> Info {
        Info { name: "Reads the clock".into(), version: "0.0.1".into(), tag: "clock".into() }
    }

    fn score(input: DecisionInput) -> Result<Vec<Option<f64>>, String> {
        let t = now();
        Ok((0..input.count).map(|_| Some((t % 7) as f64)).collect())
    }
}

export!(Clock);
