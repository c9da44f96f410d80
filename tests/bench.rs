//! The bench's measurements: profiled runs compute exactly what plain runs compute, stages add
//! up to the run and land where the work is, a stop returns what was measured, and results
//! survive a round trip through the file format.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{asset, ctx, Rng};
use refqsr::bench::{self, Config, Event};
use refqsr::profile::{Clock, Profiler, Stage};
use refqsr::quant::Mode;
use refqsr::{Options, Upscaler};

fn photo(rng: &mut Rng, w: u32, h: u32) -> image::Rgb32FImage {
    let img = image::open(asset("images/coffee.png")).unwrap().to_rgb32f();
    let x = (rng.next_u64() % (img.width() - w) as u64) as u32;
    let y = (rng.next_u64() % (img.height() - h) as u64) as u32;
    image::imageops::crop_imm(&img, x, y, w, h).to_image()
}

fn upscaler(mode: Mode) -> Upscaler {
    Upscaler::with_graph(
        ctx(),
        refqsr::upscaler::load_graph(None, Some(4)).unwrap(),
        &Options {
            mode,
            ..Options::default()
        },
    )
    .unwrap()
}

/// Stages with time in them.
fn timed(p: &Profiler) -> Vec<Stage> {
    p.stages()
        .into_iter()
        .filter(|&(_, ms)| ms > 0.0)
        .map(|(s, _)| s)
        .collect()
}

#[test]
fn profiled_runs_equal_plain_runs_and_split_into_their_stages() {
    let mut rng = Rng::fresh("profiled_runs");
    let img = photo(&mut rng, 100, 60);
    for (mode, expected, absent) in [
        (
            Mode::Fp32,
            &[Stage::Body, Stage::Tail][..],
            &[Stage::QueryBody, Stage::ClustBlock, Stage::CostVolume][..],
        ),
        (
            Mode::RefQsr { high: 8, low: 4 },
            &[
                Stage::ClustBlock,
                Stage::ReferenceBody,
                Stage::QueryBody,
                Stage::ReferPrep,
                Stage::CostVolume,
                Stage::Argmax,
                Stage::Warp,
                Stage::ReferConv,
                Stage::Tail,
            ][..],
            &[Stage::Body][..],
        ),
    ] {
        let up = upscaler(mode);
        let plain = up.upscale_rgb(&img, &mut |_, _| {}).unwrap();
        for host_only in [false, true] {
            let prof = Profiler::new(&ctx(), host_only);
            let t = std::time::Instant::now();
            let out = up
                .upscale_rgb_profiled(&img, &mut |_, _| {}, Some(&prof))
                .unwrap();
            let wall = t.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "{mode} {:?}: {:?}, wall {wall:.1} ms",
                prof.clock(),
                prof.stages()
            );
            assert_eq!(
                out.as_raw(),
                plain.as_raw(),
                "{mode}: profiling changed the output"
            );
            let stages = timed(&prof);
            for s in expected {
                assert!(
                    stages.contains(s),
                    "{mode} {:?}: no time in {s:?}",
                    prof.clock()
                );
            }
            for s in absent {
                assert!(!stages.contains(s), "{mode}: time in {s:?}");
            }
            assert!(
                prof.total() <= wall * 1.01,
                "{mode}: stages {} ms in a {wall} ms run",
                prof.total()
            );
            if host_only {
                assert_eq!(prof.clock(), Clock::Host);
            }
        }
    }
}

#[test]
fn bench_measures_records_and_stops_when_asked() {
    let dir = std::env::temp_dir().join(format!("refqsr-bench-{}", std::process::id()));
    let cfg = Config {
        modes: vec![Mode::Fp32, Mode::Uniform { w: 8, a: 8 }],
        sizes: Some(vec![(40, 24), (24, 40)]),
        runs: 2,
        warmup: 0,
        image: asset("images/astronaut.png"),
        peak_cache: Some(dir.clone()),
        ..Config::default()
    };
    let stop = AtomicBool::new(false);
    let (mut ticks, mut done) = (0, 0);
    let file = bench::run(
        &cfg,
        &mut |e| match e {
            Event::Tick => ticks += 1,
            // stop after the first complete measurement
            Event::Done(_) => {
                done += 1;
                stop.store(true, Ordering::SeqCst);
            }
            _ => {}
        },
        &stop,
    )
    .unwrap();
    assert!(file.partial, "a stop marks the file partial");
    assert_eq!((done, file.results.len()), (1, 1));
    assert_eq!(ticks, 3, "two timed runs and the profiled one");
    let r = &file.results[0];
    assert_eq!(
        (r.mode.as_str(), r.width, r.height, r.scale),
        ("fp32", 40, 24, 4)
    );
    assert_eq!(r.runs, 2);
    assert_eq!(r.times_ms.len(), 2);
    assert!(r.min_ms <= r.median_ms && r.median_ms <= r.max_ms && r.min_ms > 0.0);
    // effective throughput is the network's work on the image over the median time
    let g = refqsr::upscaler::load_graph(None, Some(4)).unwrap();
    let ops = 2.0 * bench::macs(&g, 40, 24);
    assert!((r.gops.unwrap() - ops / 1e9 / (r.median_ms / 1e3)).abs() < 1e-9);
    let peak = r.peak.unwrap();
    assert!((r.peak_share.unwrap() - r.gops.unwrap() / peak.fp32_gflops).abs() < 1e-12);
    // the weights alone are SPAN's ~1.6 MB of floats; the tensors add more
    assert!(r.memory_bytes.unwrap() > 1 << 20, "{:?}", r.memory_bytes);
    let stages = r.stages.as_ref().unwrap();
    assert!(stages.ms.contains_key("body") && stages.ms.contains_key("tail"));
    assert_eq!(r.adapter.name, ctx().info.name);
    // the file round-trips through the format --compare reads
    let path = dir.join("b.json");
    bench::save(&file, &path).unwrap();
    let (back, skipped) = bench::compare(&[path.clone(), path]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(back.len(), 1, "identical records pool");
    assert_eq!(back[0].runs, 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_beyond_the_adapter_are_refused_before_measuring() {
    let side = ctx().limits.max_texture_dimension_2d / 4 + 1;
    let stop = AtomicBool::new(false);
    let mut ticks = 0;
    let err = bench::run(
        &Config {
            sizes: Some(vec![(16, 16), (side, 8)]),
            runs: 1,
            peak_cache: None,
            image: asset("images/astronaut.png"),
            ..Config::default()
        },
        &mut |e| {
            if let Event::Tick = e {
                ticks += 1
            }
        },
        &stop,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("{side}x8")) && err.contains("largest image side"),
        "{err}"
    );
    assert_eq!(ticks, 0);
}
