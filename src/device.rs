//! Devices: resolving `cpu | cuda | auto` against what this machine has, and what its processor
//! does natively where that changes what a setting costs.
//!
//! bfloat16 products run natively only on CPUs with AVX-512 BF16 or AMX (x86) or the BF16
//! extension (Arm); elsewhere oneDNN emulates them, several times slower than f32 (an AMD EPYC
//! with AVX2 ran the bf16 tool-use benchmark at a tenth of its f32 rate).
use tch::Device;

use crate::config::DeviceChoice;
use crate::error::{Error, Result};

/// Resolves `choice` against what this machine has.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::input(
            "device: cuda was requested but libtorch sees no CUDA device (use cpu or auto)",
        )),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
    }
}

/// `cpu`, `cuda:0`, … as summaries write it.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Whether bf16 matrix products run natively on `device`.
pub fn native_bf16(device: Device) -> bool {
    match device {
        Device::Cpu => cpu_has_bf16(),
        _ => true,
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
        || cpuinfo_flags().iter().any(|f| f == "amx_bf16")
}

#[cfg(target_arch = "aarch64")]
fn cpu_has_bf16() -> bool {
    std::arch::is_aarch64_feature_detected!("bf16")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_has_bf16() -> bool {
    false
}

/// The `flags` of the first processor in /proc/cpuinfo (empty where there is none).
#[cfg(target_arch = "x86_64")]
fn cpuinfo_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, flags)| flags.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

/// The one-line warning for `policy.precision = "bf16"` on a device that emulates it, if any.
pub fn bf16_warning(device: Device) -> Option<String> {
    (!native_bf16(device)).then(|| {
        "warning: policy.precision = \"bf16\" on a CPU without native bf16 (no AVX-512 BF16 or \
         AMX): its products are emulated and run several times slower than f32; use \"f32\" here"
            .to_string()
    })
}
