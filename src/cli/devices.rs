//! `soma devices`: every adapter wgpu can see, with backend, type, driver and the limits that
//! bound what soma can train on it.

use soma::gpu::enumerate_adapters;
use soma::{Error, Result};

pub fn run(json: bool) -> Result<()> {
    let adapters = enumerate_adapters(None);
    if json {
        let list: Vec<serde_json::Value> = adapters
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name, "backend": format!("{:?}", a.backend), "device_type": format!("{:?}", a.device_type),
                    "driver": a.driver, "driver_info": a.driver_info,
                    "max_storage_buffer_binding_size": a.max_storage_buffer_binding_size,
                    "max_buffer_size": a.max_buffer_size,
                    "max_compute_workgroup_storage_size": a.max_compute_workgroup_storage_size,
                    "max_compute_invocations_per_workgroup": a.max_compute_invocations_per_workgroup,
                    "timestamp_queries": a.timestamp_queries,
                })
            })
            .collect();
        let doc = serde_json::json!({ "adapters": list });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Error::Config(e.to_string()))?
        );
        return Ok(());
    }
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: String::new(),
        });
    }
    for (i, a) in adapters.iter().enumerate() {
        println!("[{i}] {}", a.name);
        println!(
            "    backend {:?}, type {:?}, driver {} {}",
            a.backend, a.device_type, a.driver, a.driver_info
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, {} invocations/workgroup, timestamps {}",
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_compute_invocations_per_workgroup,
            if a.timestamp_queries { "yes" } else { "no" }
        );
    }
    Ok(())
}
