//! Device selection (`--device auto|cpu|cuda`) shared by every tensor a script creates.
use std::sync::OnceLock;
use tch::Device;

static DEVICE: OnceLock<Device> = OnceLock::new();

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`; `auto` picks CUDA when libtorch sees a GPU.
pub fn parse(name: &str) -> anyhow::Result<Device> {
    let cuda = tch::Cuda::is_available();
    match name {
        "auto" => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            if !cuda {
                anyhow::bail!("--device {name}: libtorch sees no CUDA device here (use --device cpu or auto)");
            }
            let index = match name.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| anyhow::anyhow!("--device {name}: expected cuda:N"))?,
                None => 0,
            };
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                anyhow::bail!("--device {name}: only {count} CUDA device(s) visible");
            }
            Ok(Device::Cuda(index))
        }
        _ => anyhow::bail!("--device {name}: expected auto, cpu, cuda or cuda:N"),
    }
}

/// Sets the device for this process; the first call wins.
pub fn set(device: Device) {
    let _ = DEVICE.set(device);
}

/// The device scripts compute on (CPU until `set` is called).
pub fn current() -> Device {
    *DEVICE.get().unwrap_or(&Device::Cpu)
}

/// The name scripts see: `cpu` or `cuda:N`.
pub fn name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
