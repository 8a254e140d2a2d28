//! Exports `describe` and `score` with the wrong types: the host must refuse to load it.

wit_bindgen::generate!({
    inline: r#"
    package joule:testing;

    world mismatch {
        export describe: func() -> string;
        export score: func(candidates: u32) -> list<f64>;
    }
    "#,
    world: "joule:testing/mismatch",
});

struct Mismatch;

impl Guest for Mismatch {
    fn describe() -> String {
        "mismatch".into()
    }

    fn score(candidates: u32) -> Vec<f64> {
        (0..candidates).map(f64::from).collect()
    }
}

export!(Mismatch);
