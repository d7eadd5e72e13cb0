//! A short demonstration client, run by `hack/demo.sh` inside the test VM: it talks CSI to a
//! running zfs-csi over its socket, as the sidecars would, and creates a volume on each tier.
//! Usage: zfs-csi-demo /path/to/csi.sock

use zfs_csi_tests::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args().nth(1).ok_or("usage: zfs-csi-demo /path/to/csi.sock")?;
    let channel = connect(std::path::Path::new(&socket)).await;
    let mut identity = csi::identity_client::IdentityClient::new(channel.clone());
    let mut controller = csi::controller_client::ControllerClient::new(channel);

    let info = identity.get_plugin_info(csi::GetPluginInfoRequest {}).await?.into_inner();
    println!("plugin {} {}", info.name, info.vendor_version);
    let ready = identity.probe(csi::ProbeRequest {}).await?.into_inner().ready;
    println!("probe: ready={}", ready.unwrap_or(false));

    let requests = [
        ("ai", "pvc-models", mount_capability(""), "a dataset for a filesystem PVC"),
        ("vms", "pvc-vm-disk", block_capability(), "a zvol for a raw block PVC (KubeVirt disk)"),
        ("tank", "pvc-media-ext4", mount_capability("ext4"), "a zvol for an ext4 PVC"),
    ];
    for (pool, name, cap, what) in requests {
        let mut req = create_request(name, pool, cap, GIB);
        req.parameters.insert("thinprovision".into(), "yes".into());
        let volume = controller.create_volume(req).await?.into_inner().volume.ok_or("no volume")?;
        println!("CreateVolume on {pool:<4}: {} ({what}), {} bytes", volume.volume_id, volume.capacity_bytes);
    }
    let snap = controller
        .create_snapshot(csi::CreateSnapshotRequest { source_volume_id: "vms/pvc-vm-disk".into(), name: "golden".into(), ..Default::default() })
        .await?
        .into_inner()
        .snapshot
        .ok_or("no snapshot")?;
    println!("CreateSnapshot: {} (restore size {} bytes)", snap.snapshot_id, snap.size_bytes);
    let mut clone = create_request("pvc-vm-clone", "vms", block_capability(), 0);
    clone.volume_content_source = snapshot_source(&snap.snapshot_id);
    let clone = controller.create_volume(clone).await?.into_inner().volume.ok_or("no volume")?;
    println!("CreateVolume from {}: {} (an instant ZFS clone)", snap.snapshot_id, clone.volume_id);
    Ok(())
}
