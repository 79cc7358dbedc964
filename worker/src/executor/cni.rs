//! CNI networking for build steps (`--oci-worker-net=cni`): each step gets a network
//! namespace of its own (`ip netns add`), set up by the configured plugins the way the CNI
//! spec runs them — each plugin binary from the plugin directory with `CNI_COMMAND=ADD`, the
//! namespace, `eth0`, and its network config (plus the previous plugin's result) on stdin —
//! with loopback brought up first, as BuildKit does. Afterwards `DEL` runs in reverse order
//! and the namespace is deleted, whatever happened to the step.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Largest plugin result read.
const MAX_RESULT: usize = 1 << 20;

/// Why CNI setup failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The config file is missing or malformed.
    #[error("CNI config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A plugin failed.
    #[error("CNI plugin {plugin} {command}: {reason}")]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// ADD or DEL.
        command: String,
        /// Its error.
        reason: String,
    },
    /// The namespace could not be made.
    #[error("network namespace {name}: {reason}")]
    Netns {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A network configuration list, read once.
#[derive(Debug, Clone)]
pub struct CniConfig {
    name: String,
    version: String,
    plugins: Vec<serde_json::Value>,
    bin_dir: PathBuf,
}

impl CniConfig {
    /// Reads `path` (a `.conflist` with `plugins`, or a single `.conf`) with plugins in
    /// `bin_dir`; every plugin binary must exist.
    pub fn load(path: &Path, bin_dir: &Path) -> Result<Self, CniError> {
        let bad = |reason: String| CniError::Config {
            path: path.display().to_string(),
            reason,
        };
        let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        if data.len() > MAX_RESULT {
            return Err(bad("larger than 1 MiB".into()));
        }
        let v: serde_json::Value = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
        let name = v["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("no \"name\"".into()))?
            .to_string();
        let version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
        let plugins: Vec<serde_json::Value> = match v["plugins"].as_array() {
            Some(list) => list.clone(),
            None if v["type"].is_string() => vec![v.clone()],
            None => return Err(bad("neither \"plugins\" nor \"type\"".into())),
        };
        if plugins.is_empty() {
            return Err(bad("empty \"plugins\"".into()));
        }
        for p in &plugins {
            let t = p["type"]
                .as_str()
                .filter(|t| !t.is_empty() && !t.contains('/'))
                .ok_or_else(|| bad(format!("plugin without a plain \"type\": {p}")))?;
            if !bin_dir.join(t).is_file() {
                return Err(bad(format!(
                    "plugin {t} not found in {}",
                    bin_dir.display()
                )));
            }
        }
        if !bin_dir.join("loopback").is_file() {
            return Err(bad(format!(
                "plugin loopback not found in {}",
                bin_dir.display()
            )));
        }
        Ok(CniConfig {
            name,
            version,
            plugins,
            bin_dir: bin_dir.to_path_buf(),
        })
    }

    fn exec(
        &self,
        plugin: &serde_json::Value,
        command: &str,
        id: &str,
        netns: &Path,
        ifname: &str,
        prev: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, CniError> {
        let t = plugin["type"].as_str().unwrap_or_default().to_string();
        let fail = |reason: String| CniError::Plugin {
            plugin: t.clone(),
            command: command.into(),
            reason,
        };
        let mut conf = plugin.clone();
        conf["name"] = serde_json::Value::String(self.name.clone());
        conf["cniVersion"] = serde_json::Value::String(self.version.clone());
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let mut child = Command::new(self.bin_dir.join(&t))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| fail(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        let stdout = &out.stdout[..out.stdout.len().min(MAX_RESULT)];
        if !out.status.success() {
            let msg = serde_json::from_slice::<serde_json::Value>(stdout)
                .ok()
                .and_then(|v| v["msg"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(fail(msg));
        }
        if stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(prev.cloned().unwrap_or(serde_json::Value::Null));
        }
        serde_json::from_slice(stdout).map_err(|e| fail(format!("result: {e}")))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A step's network namespace, torn down on drop.
pub struct StepNetwork {
    cfg: CniConfig,
    id: String,
    name: String,
    results: Vec<(serde_json::Value, serde_json::Value)>,
    loopback: bool,
}

impl StepNetwork {
    /// Creates the namespace for step `id` and runs every plugin's ADD.
    pub fn create(cfg: &CniConfig, id: &str) -> Result<Self, CniError> {
        let name = format!("stargaze-{id}");
        let name = name[..name.len().min(64)].to_string();
        ip(&["netns", "add", &name]).map_err(|reason| CniError::Netns {
            name: name.clone(),
            reason,
        })?;
        let mut me = StepNetwork {
            cfg: cfg.clone(),
            id: id.to_string(),
            name,
            results: Vec::new(),
            loopback: false,
        };
        let ns = me.path();
        let lo = serde_json::json!({"type": "loopback"});
        cfg.exec(&lo, "ADD", id, &ns, "lo", None)?;
        me.loopback = true;
        let mut prev: Option<serde_json::Value> = None;
        for p in &cfg.plugins {
            let r = cfg.exec(p, "ADD", id, &ns, "eth0", prev.as_ref())?;
            me.results.push((p.clone(), r.clone()));
            prev = Some(r);
        }
        Ok(me)
    }

    /// The namespace's path, for the spec.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for StepNetwork {
    fn drop(&mut self) {
        let ns = self.path();
        let last = self.results.last().map(|(_, r)| r.clone());
        for (p, _) in self.results.iter().rev() {
            if let Err(e) = self
                .cfg
                .exec(p, "DEL", &self.id, &ns, "eth0", last.as_ref())
            {
                tracing::warn!(error = %e, "CNI DEL");
            }
        }
        if self.loopback {
            let lo = serde_json::json!({"type": "loopback"});
            let _ = self.cfg.exec(&lo, "DEL", &self.id, &ns, "lo", None);
        }
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            tracing::warn!(error = %e, "deleting a step's network namespace");
        }
    }
}
