//! Criterion benchmarks of the overlay core, without mounting: lookup through layers, the
//! merge of a big directory, and the whiteout name codec.

use std::ffi::OsStr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use overlayfuse::fs::{marker, Layer, Overlay};

/// `count` layers; layer i holds `dir/f{j}` for j ≡ i (mod count) of `files` names, and the
/// top one whites out every tenth name as `.wh.` files.
fn layers(root: &Path, count: usize, files: usize) -> Vec<Layer> {
    let mut out = Vec::new();
    for i in 0..count {
        let dir = root.join(format!("l{i}/dir"));
        std::fs::create_dir_all(&dir).unwrap();
        for j in (0..files).filter(|j| j % count == i) {
            std::fs::write(dir.join(format!("f{j}")), b"x").unwrap();
        }
        if i == 0 {
            for j in (0..files).step_by(10) {
                std::fs::write(dir.join(format!(".wh.f{j}")), b"").unwrap();
            }
        }
        out.push(Layer::open(i, &root.join(format!("l{i}"))).unwrap());
    }
    out
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup_missing_name");
    for count in [1, 16, 128] {
        let tmp = tempfile::tempdir().unwrap();
        let overlay = Overlay::new(layers(tmp.path(), count, 0), None).unwrap();
        let dir = overlay.lookup(1, OsStr::new("dir")).unwrap().0.ino;
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| overlay.lookup(dir, OsStr::new("absent")).unwrap_err())
        });
    }
    group.finish();
}

fn merge(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let overlay = Overlay::new(layers(tmp.path(), 3, 20_000), None).unwrap();
    let dir = overlay.lookup(1, OsStr::new("dir")).unwrap().0.ino;
    c.bench_function("readdir_merge_20000_over_3_layers", |b| {
        b.iter(|| {
            let fh = overlay.opendir(dir).unwrap();
            let mut n = 0;
            overlay
                .readdir(fh, 0, |_, _| {
                    n += 1;
                    false
                })
                .unwrap();
            overlay.releasedir(fh);
            n
        })
    });
}

fn codec(c: &mut Criterion) {
    let names: Vec<String> = (0..1000)
        .map(|i| {
            if i % 3 == 0 {
                format!(".wh.name{i}")
            } else {
                format!("name{i}")
            }
        })
        .collect();
    c.bench_function("whiteout_name_codec_1000", |b| {
        b.iter(|| {
            names
                .iter()
                .filter(|n| marker::name_role(OsStr::new(n)) != marker::NameRole::Plain)
                .count()
        })
    });
}

criterion_group!(benches, lookup, merge, codec);
criterion_main!(benches);
