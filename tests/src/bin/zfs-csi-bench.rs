//! Benchmark, run inside the test VM by `hack/bench.sh`: the driver's CreateVolume +
//! DeleteVolume against the bare `zfs create` + `zfs destroy` of the same kind, interleaved so
//! that both see the same machine, and 32 concurrent creations each way. Prints figures; it
//! asserts nothing (targets are judged by reading them, not by a timed test).
//! Usage: zfs-csi-bench SOCKET POOL [ITERATIONS]

use std::time::{Duration, Instant};

use zfs_csi_tests::*;

const CONCURRENT: usize = 32;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The bare commands of the same kind, with the properties the driver sets.
fn bare_create_args(kind: &str, name: &str) -> Vec<String> {
    let args: Vec<&str> = match kind {
        "dataset" => vec!["create", "-o", "mountpoint=legacy", "-o", "refquota=67108864"],
        _ => vec!["create", "-s", "-V", "67108864"],
    };
    args.into_iter().map(str::to_string).chain([name.to_string()]).collect()
}

/// `zfs destroy`, retried while udev still has a new zvol's device open (the driver does the
/// same), so both sides pay the same for it.
fn bare_destroy(name: &str) {
    let mut backoff = Duration::from_millis(50);
    for _ in 0..6 {
        match run("zfs", &["destroy", name]) {
            Ok(_) => return,
            Err(e) if e.contains("busy") => {
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            Err(e) => panic!("zfs destroy {name}: {e}"),
        }
    }
    zfs(&["destroy", name]);
}

fn capability(kind: &str) -> csi::VolumeCapability {
    if kind == "dataset" {
        mount_capability("")
    } else {
        block_capability()
    }
}

fn request(kind: &str, pool: &str, name: &str) -> csi::CreateVolumeRequest {
    let mut req = create_request(name, pool, capability(kind), 64 * MIB);
    req.parameters.insert("thinprovision".into(), "yes".into());
    req
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().ok_or("usage: zfs-csi-bench SOCKET POOL [ITERATIONS]")?;
    let pool = args.next().ok_or("usage: zfs-csi-bench SOCKET POOL [ITERATIONS]")?;
    let iterations: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(40);
    let channel = connect(std::path::Path::new(&socket)).await;
    let controller = csi::controller_client::ControllerClient::new(channel);

    println!("zfs-csi benchmark on pool {pool}: {iterations} create+delete cycles per kind, interleaved");
    println!("{:<8} {:>14} {:>14} {:>14} {:>14} {:>10}", "kind", "driver p50 ms", "bare p50 ms", "driver p95 ms", "bare p95 ms", "p50 over");
    for kind in ["dataset", "zvol"] {
        let (mut driver, mut bare) = (Vec::new(), Vec::new());
        for i in 0..iterations {
            let name = format!("bench-{kind}-{i}");
            let start = Instant::now();
            let mut c = controller.clone();
            let v = c.create_volume(request(kind, &pool, &name)).await?.into_inner().volume.ok_or("no volume")?;
            c.delete_volume(csi::DeleteVolumeRequest { volume_id: v.volume_id, ..Default::default() }).await?;
            driver.push(start.elapsed());

            let dataset = format!("{pool}/bare-{kind}-{i}");
            let start = Instant::now();
            let create = bare_create_args(kind, &dataset);
            zfs(&create.iter().map(String::as_str).collect::<Vec<_>>());
            bare_destroy(&dataset);
            bare.push(start.elapsed());
        }
        let (d50, b50) = (percentile(&mut driver, 0.5), percentile(&mut bare, 0.5));
        let (d95, b95) = (percentile(&mut driver, 0.95), percentile(&mut bare, 0.95));
        println!(
            "{kind:<8} {:>14.1} {:>14.1} {:>14.1} {:>14.1} {:>9.1}%",
            ms(d50), ms(b50), ms(d95), ms(b95), (ms(d50) / ms(b50) - 1.0) * 100.0
        );
    }

    // What one extra command costs here: DeleteVolume reads the dataset's properties (is it
    // ours?) before destroying it.
    let mut gets = Vec::new();
    for _ in 0..iterations {
        let start = Instant::now();
        zfs(&["get", "-H", "-p", "type", &pool]);
        gets.push(start.elapsed());
    }
    println!("one bare `zfs get`: p50 {:.1} ms", ms(percentile(&mut gets, 0.5)));

    println!("\n{CONCURRENT} concurrent creations of datasets (wall time)");
    let start = Instant::now();
    let calls: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let mut c = controller.clone();
            let req = request("dataset", &pool, &format!("bench-conc-{i}"));
            tokio::spawn(async move { c.create_volume(req).await })
        })
        .collect();
    for call in calls {
        call.await??;
    }
    let driver_wall = start.elapsed();
    let start = Instant::now();
    let children: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            std::process::Command::new("zfs")
                .args(bare_create_args("dataset", &format!("{pool}/bare-conc-{i}")))
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        assert!(child.wait()?.success(), "bare zfs create failed");
    }
    let bare_wall = start.elapsed();
    println!(
        "driver {:.0} ms, bare zfs {:.0} ms: {:.2}x",
        ms(driver_wall),
        ms(bare_wall),
        ms(driver_wall) / ms(bare_wall)
    );
    for i in 0..CONCURRENT {
        let mut c = controller.clone();
        c.delete_volume(csi::DeleteVolumeRequest { volume_id: format!("{pool}/bench-conc-{i}"), ..Default::default() }).await?;
        bare_destroy(&format!("{pool}/bare-conc-{i}"));
    }
    Ok(())
}
