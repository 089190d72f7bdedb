//! Which Burn device the models run on: flex (CPU, always built in) or a GPU backend compiled in
//! with the `cuda` or `wgpu` feature. Chosen by name, never by Burn's own default (which picks a
//! GPU backend whenever one is compiled in, present or not).

use burn::tensor::Device;

use crate::Error;

/// The device names this build accepts.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["cpu"];
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    names
}

/// The device called `name`: `cpu` (flex), `cuda` or `wgpu` (the first GPU of that backend).
pub fn by_name(name: &str) -> Result<Device, Error> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0usize)),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[allow(unreachable_patterns)]
        "cuda" | "wgpu" => Err(Error::Setting(format!(
            "`device` {name} needs a build with that backend: cargo build --release --features {name}"
        ))),
        other => Err(Error::Setting(format!(
            "unknown `device` {other:?}; this build has {}",
            available().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_always_there_and_unknown_names_are_refused() {
        assert!(by_name("cpu").is_ok());
        let err = by_name("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown `device` \"tpu\""), "{err}");
        if !cfg!(feature = "cuda") {
            let err = by_name("cuda").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
