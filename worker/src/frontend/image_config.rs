//! A stage's image config, typed. oci-spec's `ImageConfiguration` holds what a build reads
//! and changes; the fields it does not model (Docker's `container_config`, `ArgsEscaped`,
//! …) and the modelled fields a base image wrote as `null` are kept verbatim beside it. The
//! document written is the typed fields laid over those, keys in sorted order (as a
//! `serde_json::Value` writes them), so a base config passes through a build unchanged
//! except where an instruction changed it.

use oci_spec::image::{Arch, Config, History, ImageConfiguration, Os, RootFs};
use serde_json::{Map, Value};
use stargaze_fs::remote::Platform;

/// Top-level fields `ImageConfiguration` models.
const TOP_FIELDS: &[&str] = &[
    "created",
    "author",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "config",
    "rootfs",
    "history",
];

/// Fields of `config` that oci-spec's `Config` models.
const CONFIG_FIELDS: &[&str] = &[
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
];

/// An image config document: typed, with what the type does not hold kept as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    spec: ImageConfiguration,
    /// Top-level fields outside `spec` (or `null` in the document), verbatim.
    extra: Map<String, Value>,
    /// `config` fields outside `spec.config` (or `null` in the document), verbatim.
    config_extra: Map<String, Value>,
    /// The architecture as written when oci-spec would write it differently (it reads
    /// `armbe` as `arm64be`).
    architecture: Option<String>,
}

/// Moves the fields of `obj` not in `known`, and the `null` ones, into a map of their own.
fn split_off(obj: &mut Map<String, Value>, known: &[&str]) -> Map<String, Value> {
    let keys: Vec<String> = obj
        .iter()
        .filter(|(k, v)| !known.contains(&k.as_str()) || v.is_null())
        .map(|(k, _)| k.clone())
        .collect();
    let mut out = Map::new();
    for k in keys {
        if let Some(v) = obj.remove(&k) {
            out.insert(k, v);
        }
    }
    out
}

/// Lays the fields of `under` that `over` lacks into `over`.
fn underlay(over: &mut Map<String, Value>, under: &Map<String, Value>) {
    for (k, v) in under {
        over.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

impl ImageConfig {
    /// The config of an image with no layers (`FROM scratch`) for `platform`.
    pub fn scratch(platform: &Platform) -> Self {
        let mut spec = ImageConfiguration::default();
        spec.set_architecture(Arch::from(platform.architecture.as_str()));
        spec.set_os(Os::from(platform.os.as_str()));
        spec.set_config(Some(Config::default()));
        spec.set_rootfs(RootFs::default());
        spec.set_history(Some(Vec::new()));
        ImageConfig {
            spec,
            extra: Map::new(),
            config_extra: Map::new(),
            architecture: None,
        }
    }

    /// Reads a config document.
    pub fn from_value(mut doc: Value) -> Result<Self, serde_json::Error> {
        let Value::Object(top) = &mut doc else {
            return Err(serde::de::Error::custom("not a JSON object"));
        };
        let extra = split_off(top, TOP_FIELDS);
        let config_extra = match top.get_mut("config") {
            Some(Value::Object(c)) => split_off(c, CONFIG_FIELDS),
            _ => Map::new(),
        };
        let architecture = top
            .get("architecture")
            .and_then(Value::as_str)
            .filter(|a| Arch::from(*a).to_string() != *a)
            .map(str::to_string);
        Ok(ImageConfig {
            spec: serde_json::from_value(doc)?,
            extra,
            config_extra,
            architecture,
        })
    }

    /// The document: typed fields over the verbatim ones.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        let mut doc = serde_json::to_value(&self.spec)?;
        if let Value::Object(top) = &mut doc {
            if let Some(Value::Object(c)) = top.get_mut("config") {
                underlay(c, &self.config_extra);
            }
            underlay(top, &self.extra);
            if let Some(a) = &self.architecture {
                top.insert("architecture".into(), Value::String(a.clone()));
            }
        }
        Ok(doc)
    }

    /// The document as written into an image.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.to_value()?)
    }

    /// The typed fields.
    pub fn spec(&self) -> &ImageConfiguration {
        &self.spec
    }

    /// The execution parameters (`config`), if the document has them.
    pub fn config(&self) -> Option<&Config> {
        self.spec.config().as_ref()
    }

    /// Changes the execution parameters (created empty when the document has none).
    pub fn edit_config(&mut self, f: impl FnOnce(&mut Config)) {
        let mut c = self.spec.config().clone().unwrap_or_default();
        f(&mut c);
        self.spec.set_config(Some(c));
    }

    /// Sets `config.Cmd` to `null` (an ENTRYPOINT drops the inherited CMD).
    pub fn clear_cmd(&mut self) {
        self.edit_config(|c| {
            c.set_cmd(None);
        });
        self.config_extra.insert("Cmd".into(), Value::Null);
    }

    /// `config.Shell` (Docker's field, set by `SHELL`), when the document has one.
    pub fn shell(&self) -> Option<Vec<String>> {
        let v = self.config_extra.get("Shell")?.as_array()?;
        let shell: Option<Vec<String>> = v.iter().map(|s| s.as_str().map(String::from)).collect();
        shell.filter(|s| !s.is_empty())
    }

    /// Sets `config.Shell`.
    pub fn set_shell(&mut self, shell: Vec<String>) {
        if self.spec.config().is_none() {
            self.spec.set_config(Some(Config::default()));
        }
        self.config_extra.insert(
            "Shell".into(),
            Value::Array(shell.into_iter().map(Value::String).collect()),
        );
    }

    /// `config.OnBuild` (Docker's field, the `ONBUILD` triggers), empty when unset.
    pub fn on_build(&self) -> Vec<String> {
        self.config_extra
            .get("OnBuild")
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds an `ONBUILD` trigger to `config.OnBuild`.
    pub fn push_on_build(&mut self, trigger: String) {
        let mut all = self.on_build();
        all.push(trigger);
        if self.spec.config().is_none() {
            self.spec.set_config(Some(Config::default()));
        }
        self.config_extra.insert(
            "OnBuild".into(),
            Value::Array(all.into_iter().map(Value::String).collect()),
        );
    }

    /// Takes the triggers out of `config.OnBuild` (an image built on this one runs them
    /// and does not pass them on).
    pub fn take_on_build(&mut self) -> Vec<String> {
        let all = self.on_build();
        self.config_extra.remove("OnBuild");
        all
    }

    /// Sets `created`.
    pub fn set_created(&mut self, created: String) {
        self.spec.set_created(Some(created));
    }

    /// The layers' diff IDs, bottom first.
    pub fn diff_ids(&self) -> &[String] {
        self.spec.rootfs().diff_ids()
    }

    /// Adds a layer's diff ID on top.
    pub fn push_diff_id(&mut self, diff_id: String) {
        let mut rootfs = self.spec.rootfs().clone();
        let mut ids = rootfs.diff_ids().clone();
        ids.push(diff_id);
        rootfs.set_diff_ids(ids);
        self.spec.set_rootfs(rootfs);
    }

    /// Adds a history entry.
    pub fn push_history(&mut self, entry: History) {
        let mut h = self.spec.history().clone().unwrap_or_default();
        h.push(entry);
        self.spec.set_history(Some(h));
    }
}

/// Unix seconds as RFC 3339 UTC (the dates of configs and their history).
pub fn rfc3339(secs: i64) -> String {
    stargaze_fs::format::time::format_rfc3339(secs)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn onbuild_triggers_are_added_and_taken() {
        let mut cfg = ImageConfig::scratch(&Platform::parse("linux/amd64").unwrap());
        assert!(cfg.on_build().is_empty());
        cfg.push_on_build("RUN a".into());
        cfg.push_on_build("RUN b".into());
        let doc = cfg.to_value().unwrap();
        assert_eq!(
            doc["config"]["OnBuild"],
            serde_json::json!(["RUN a", "RUN b"])
        );
        let mut again = ImageConfig::from_value(doc).unwrap();
        assert_eq!(again.take_on_build(), ["RUN a", "RUN b"]);
        assert!(again.on_build().is_empty());
        assert!(again.to_value().unwrap()["config"].get("OnBuild").is_none());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_000_000), "2025-11-24T16:00:00Z");
    }

    /// A config the way Docker writes them: extra fields, nulls, maps.
    const DOCKER: &str = r##"{
        "architecture": "amd64",
        "os": "linux",
        "container": "abc",
        "docker_version": "20.10.7",
        "created": "2021-06-15T20:19:38.021417767Z",
        "container_config": {"Hostname": "abc", "Cmd": ["/bin/sh", "-c", "#(nop) CMD [\"sh\"]"]},
        "config": {
            "Hostname": "",
            "AttachStdin": false,
            "Env": ["PATH=/usr/bin:/bin"],
            "Cmd": ["sh"],
            "Image": "sha256:0123",
            "Volumes": null,
            "WorkingDir": "",
            "Entrypoint": null,
            "OnBuild": null,
            "Labels": {"b": "2", "a": "1"},
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
        "history": [{"created": "2021-06-15T20:19:37Z", "created_by": "ADD file:x in /"}]
    }"##;

    #[test]
    fn a_base_config_passes_through_byte_for_byte() {
        let v: Value = serde_json::from_str(DOCKER).unwrap();
        let c = ImageConfig::from_value(v.clone()).unwrap();
        assert_eq!(c.to_bytes().unwrap(), serde_json::to_vec(&v).unwrap());
        let conf = c.config().unwrap();
        assert_eq!(conf.cmd().as_deref(), Some(&["sh".to_string()][..]));
        assert!(conf.entrypoint().is_none());
        assert_eq!(c.diff_ids(), ["sha256:aa".to_string()]);
    }

    #[test]
    fn typed_changes_win_over_verbatim_nulls() {
        let v: Value = serde_json::from_str(DOCKER).unwrap();
        let mut c = ImageConfig::from_value(v).unwrap();
        c.edit_config(|k| {
            k.set_entrypoint(Some(vec!["/bin/cat".into()]));
        });
        c.clear_cmd();
        let out = c.to_value().unwrap();
        assert_eq!(out["config"]["Entrypoint"], serde_json::json!(["/bin/cat"]));
        assert!(out["config"]["Cmd"].is_null());
        assert!(out["config"].as_object().unwrap().contains_key("Cmd"));
        assert_eq!(out["config"]["Hostname"], "");
        assert_eq!(out["docker_version"], "20.10.7");
        c.edit_config(|k| {
            k.set_cmd(Some(vec!["x".into()]));
        });
        assert_eq!(
            c.to_value().unwrap()["config"]["Cmd"],
            serde_json::json!(["x"])
        );
    }

    #[test]
    fn architectures_stay_as_written() {
        for arch in ["armbe", "386", "amd64", "somethingnew"] {
            let v = serde_json::json!({
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            });
            let c = ImageConfig::from_value(v.clone()).unwrap();
            assert_eq!(c.to_value().unwrap(), v, "{arch}");
        }
    }

    #[test]
    fn scratch_is_empty() {
        let p = Platform::parse("linux/arm64").unwrap();
        let c = ImageConfig::scratch(&p);
        assert_eq!(
            c.to_value().unwrap(),
            serde_json::json!({
                "architecture": "arm64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            })
        );
    }

    #[test]
    fn not_a_config() {
        assert!(ImageConfig::from_value(serde_json::json!([1])).is_err());
        assert!(ImageConfig::from_value(serde_json::json!({"os": "linux"})).is_err());
    }

    #[test]
    fn layers_and_dates_go_on_top() {
        let mut c = ImageConfig::scratch(&Platform::parse("linux/amd64").unwrap());
        c.push_diff_id("sha256:01".into());
        c.push_diff_id("sha256:02".into());
        c.set_created("2025-01-02T03:04:05Z".into());
        assert_eq!(
            c.diff_ids(),
            ["sha256:01".to_string(), "sha256:02".to_string()]
        );
        let v = c.to_value().unwrap();
        assert_eq!(v["created"], "2025-01-02T03:04:05Z");
        assert_eq!(
            v["rootfs"],
            serde_json::json!({"type": "layers", "diff_ids": ["sha256:01", "sha256:02"]})
        );
        // What is written reads back as the same config.
        assert_eq!(ImageConfig::from_value(v).unwrap(), c);
    }

    #[test]
    fn edits_create_a_missing_or_null_config() {
        for config in [None, Some(Value::Null)] {
            let mut v = serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
                "moby.extra": [1],
            });
            if let Some(c) = config.clone() {
                v["config"] = c;
            }
            let mut c = ImageConfig::from_value(v.clone()).unwrap();
            assert!(c.config().is_none(), "{config:?}");
            assert_eq!(c.to_value().unwrap(), v, "{config:?}");
            c.edit_config(|k| {
                k.set_user(Some("app".into()));
            });
            let out = c.to_value().unwrap();
            assert_eq!(
                out["config"],
                serde_json::json!({"User": "app"}),
                "{config:?}"
            );
            assert_eq!(out["moby.extra"], serde_json::json!([1]));
        }
    }

    #[test]
    fn history_entries_append_after_the_base() {
        let v: Value = serde_json::from_str(DOCKER).unwrap();
        let mut c = ImageConfig::from_value(v).unwrap();
        let mut h = History::default();
        h.set_created_by(Some("RUN x".into()));
        h.set_empty_layer(Some(false));
        c.push_history(h);
        let out = c.to_value().unwrap();
        let hs = out["history"].as_array().unwrap();
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[0]["created_by"], "ADD file:x in /");
        assert_eq!(hs[1]["created_by"], "RUN x");
        assert_eq!(hs[1]["empty_layer"], false);
    }
}
