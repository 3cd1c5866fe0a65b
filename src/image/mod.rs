//! `overlayfuse image`: OCI images in a local store. `import` takes an OCI archive or layout
//! ([`import`]), `ls` lists the store, `inspect` shows one image (its layer directories as
//! a `lowerdir`), `rm` removes images (layers another image shares stay), `export` writes
//! an OCI archive ([`export`]). The store's layout is in [`store`].

pub mod export;
pub mod import;
pub mod progress;
pub mod run;
pub mod source;
pub mod store;
#[cfg(test)]
mod tests;
pub mod unpack;

use std::path::{Path, PathBuf};

use crate::cli::{ImageArgs, ImageCommand};
use crate::error::Error;
use progress::Progress;
use store::{ImageRecord, Store};

/// Runs one `image` command.
pub fn run(args: &ImageArgs) -> Result<(), Error> {
    let dir = args.store.clone().unwrap_or_else(store::default_dir);
    let store = Store::open(&dir)?;
    match &args.command {
        ImageCommand::Import { source, name } => {
            let mut progress = Progress::for_stderr();
            let imported = import::import(&store, source, name.as_deref(), &mut progress);
            let mut catalog = store.catalog()?;
            let record = match imported {
                Ok(r) => r,
                Err(e) => {
                    // Blobs taken in for it and now used by no image go.
                    let _ = store.collect_garbage(&catalog);
                    return Err(e);
                }
            };
            let id = record.config.digest.clone();
            let name = record.name.clone();
            let replaced = catalog.put(record);
            store.save_catalog(&catalog)?;
            if replaced.is_some() {
                store.collect_garbage(&catalog)?;
            }
            println!("{name} {id}");
            Ok(())
        }
        ImageCommand::Ls => {
            print!("{}", listing(&store.catalog()?.images));
            Ok(())
        }
        ImageCommand::Inspect { name } => {
            let catalog = store.catalog()?;
            let image = find(&catalog.images, name, &dir)?;
            println!("{}", inspect(&store, image)?);
            Ok(())
        }
        ImageCommand::Rm { names } => {
            let mut catalog = store.catalog()?;
            for name in names {
                find(&catalog.images, name, &dir)?;
            }
            for name in names {
                catalog.remove(name);
            }
            store.save_catalog(&catalog)?;
            let (layers, blobs) = store.collect_garbage(&catalog)?;
            log::info!("removed {layers} layers and {blobs} blobs no other image uses");
            for name in names {
                println!("{name}");
            }
            Ok(())
        }
        ImageCommand::Export { name, output } => {
            let catalog = store.catalog()?;
            let image = find(&catalog.images, name, &dir)?;
            export::export(&store, image, output, &mut Progress::for_stderr())
        }
    }
}

fn find<'a>(images: &'a [ImageRecord], name: &str, dir: &Path) -> Result<&'a ImageRecord, Error> {
    images.iter().find(|i| i.name == name).ok_or_else(|| {
        Error::runtime(format!(
            "no image named '{name}' in the store '{}': see 'overlayfuse image ls'",
            dir.display()
        ))
    })
}

/// The `image ls` table: name, id (the config digest's first 12 hex digits), layers and
/// the size of the layer blobs.
pub fn listing(images: &[ImageRecord]) -> String {
    let mut out = format!(
        "{:<40} {:<12} {:>6} {:>10}\n",
        "NAME", "ID", "LAYERS", "SIZE"
    );
    for i in images {
        let size: u64 = i.layers.iter().map(|l| l.blob.size).sum();
        out += &format!(
            "{:<40} {:<12} {:>6} {:>10}\n",
            i.name,
            &i.config.digest[7..19],
            i.layers.len(),
            human(size)
        );
    }
    out
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The layer directories of `image`, topmost first (a `lowerdir`).
pub fn lower_dirs(store: &Store, image: &ImageRecord) -> Vec<PathBuf> {
    image
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(&l.diff_id))
        .collect()
}

/// `image inspect`: the record, its layer directories, a `lowerdir` and the image config.
fn inspect(store: &Store, image: &ImageRecord) -> Result<String, Error> {
    let config = store.json_blob(&image.config.digest)?;
    let lowerdir = crate::cli::optlist::join_layers(&lower_dirs(store, image));
    let layers: Vec<serde_json::Value> = image
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "digest": l.blob.digest,
                "diff_id": l.diff_id,
                "dir": store.layer_dir(&l.diff_id),
            })
        })
        .collect();
    let v = serde_json::json!({
        "name": image.name,
        "id": image.config.digest,
        "manifest": image.manifest.digest,
        "markers": store.markers.option_value(),
        "layers": layers,
        "lowerdir": lowerdir,
        "config": config,
    });
    Ok(serde_json::to_string_pretty(&v).expect("a JSON value encodes"))
}
