//! The core's instruction model (`tinyvit_core::cost`) against the instruction counts of the
//! firmware under QEMU (`-icount shift=0`) committed in `fixtures/cost_counts.txt` (written by
//! `cargo xtask cost --measure`): every count within the stated bound.

use tinyvit_core::cost::{self, Cpu, DeviceEngine, Measured};

const FIXTURE: &str = include_str!("fixtures/cost_counts.txt");

#[test]
fn the_model_is_within_its_bound_of_every_measured_count() {
    let rows: Vec<Measured<'_>> = FIXTURE.lines().filter_map(Measured::parse).collect();
    let lines = FIXTURE
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(rows.len(), lines, "a fixture line does not parse");
    for engine in [DeviceEngine::F32, DeviceEngine::Int8] {
        let n = rows.iter().filter(|r| r.engine == engine).count();
        assert!(n >= 8, "{engine:?}: only {n} measured configs");
    }
    let mut worst = [0.0f64; 2];
    for r in &rows {
        for (k, cpu) in [Cpu::M4, Cpu::M7].into_iter().enumerate() {
            let model = cost::instructions(&r.config, r.engine, cpu).unwrap() as f64;
            let measured = r.instr[k] as f64;
            let err = (model - measured).abs() / measured;
            let e = r.engine as usize;
            worst[e] = worst[e].max(err);
            assert!(
                err <= cost::bound(r.engine),
                "{} {:?} on {cpu:?}: model {model} against measured {measured}: {:.2} % > {:.1} %",
                r.name,
                r.engine,
                100.0 * err,
                100.0 * cost::bound(r.engine)
            );
        }
    }
    eprintln!(
        "largest relative error: f32 {:.2} %, int8 {:.2} %",
        100.0 * worst[0],
        100.0 * worst[1]
    );
}
