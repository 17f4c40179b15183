//! `[[transforms]]` from a file and from `CONNECTOR_TRANSFORMS`, in its own process (it sets
//! env vars): the programs compile at load, a compile error names the field, the line and
//! the column.

use danube_connect_core::config::{ConnectorConfig, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Empty {}

impl Validate for Empty {}

#[test]
fn transforms_come_from_a_file_and_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("strip.vrl");
    std::fs::write(&program, "del(.password)\n").expect("write");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "[[transforms]]\nname = \"strip\"\nfile = \"{}\"\ntopics = [\"/default/users\"]\n\n[[transforms]]\nname = \"tag\"\nsource = '''\n%attributes.tagged = \"1\"\n'''\n",
            program.display()
        ),
    )
    .expect("write");
    let config = ConnectorConfig::<Empty>::load(Some(&file), "EMPTY").expect("loads");
    let names: Vec<&str> = config.runtime.transforms.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["strip", "tag"]);
    assert_eq!(config.runtime.transforms[0].topics, ["/default/users"]);
    assert!(config.to_redacted_toml().contains("strip"), "--check shows the transforms");

    std::env::set_var("CONNECTOR_TRANSFORMS", r#"[{name="env", source="del(.secret)"}]"#);
    let config = ConnectorConfig::<Empty>::load(None, "EMPTY").expect("loads from the environment");
    assert_eq!(config.runtime.transforms.len(), 1);
    assert_eq!(config.runtime.transforms[0].source.as_deref(), Some("del(.secret)"));

    std::env::set_var(
        "CONNECTOR_TRANSFORMS",
        r#"[{name="ok", source=".a = 1"}, {name="bad", source=".a = 1\n.b = to_strin(.a)"}]"#,
    );
    let error = ConnectorConfig::<Empty>::load(None, "EMPTY").expect_err("does not compile").to_string();
    assert!(error.contains("transforms[1].source"), "{error}");
    assert!(error.contains("line 2, column 6"), "{error}");
    assert!(error.contains("to_strin"), "VRL's diagnostic is kept: {error}");

    std::env::set_var("CONNECTOR_TRANSFORMS", r#"[{name="x", file="/nonexistent/x.vrl"}]"#);
    let error = ConnectorConfig::<Empty>::load(None, "EMPTY").expect_err("no file").to_string();
    assert!(error.contains("transforms[0].file"), "{error}");
    std::env::remove_var("CONNECTOR_TRANSFORMS");
}
