//! Every rule of the config's validation, with the error and its path.

use crate::config::{parse, ConfigError};

const BASE: &str = "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:9001}]\n";

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => vec![],
        Err(e) => e.lines(),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(BASE).expect("valid");
    assert_eq!(c.upstreams[0].weight, 1);
    assert_eq!(c.affinity.max_body_bytes, 32 * 1024 * 1024);
    assert!(c.timeouts.pool_idle < std::time::Duration::from_secs(600));
    assert!(c.affinity.keys.is_empty());
}

#[test]
fn bad_values_are_named_by_path() {
    let cases = [
        ("listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:1}, {id: b, addr: 127.0.0.1:2}, {id: c, addr: x}]\n",
         "upstreams[2].addr: invalid socket address \"x\""),
        ("listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:1}, {id: a, addr: 127.0.0.1:2}]\n",
         "upstreams[1].id: duplicate id \"a\""),
        (&format!("{BASE}affinity: {{keys: [{{header: x, cookie: y}}]}}\n"), "affinity.keys[0]: needs exactly one of"),
        (&format!("{BASE}affinity: {{keys: [{{json: metadata}}]}}\n"), "affinity.keys[0].json: invalid JSON pointer"),
        (&format!("{BASE}affinity: {{keys: [{{header: x, regex: '('}}]}}\n"), "affinity.keys[0].regex: invalid regex"),
        (&format!("{BASE}admin: {{listen: 0.0.0.0:9900}}\n"), "admin.listen: 0.0.0.0:9900 is not a loopback address"),
        // Port 0 binds the same address: it needs a token as much.
        (&format!("{BASE}admin: {{listen: 0.0.0.0:0}}\n"), "admin.listen: 0.0.0.0:0 is not a loopback address"),
        (&format!("{BASE}admin: {{listen: '[::]:0'}}\n"), "admin.listen: [::]:0 is not a loopback address"),
        (&format!("{BASE}admin: {{listen: '[::]:9900'}}\n"), "admin.listen: [::]:9900 is not a loopback address"),
        (&format!("{BASE}passive_health: {{max_ejected_percent: 101}}\n"), "passive_health.max_ejected_percent"),
        ("listen: []\nupstreams: []\n", "listen: at least one listener is required"),
    ];
    for (text, want) in cases {
        let got = errors(text);
        assert!(
            got.iter().any(|l| l.starts_with(want)),
            "want {want:?} in {got:?}"
        );
    }
}

#[test]
fn a_world_readable_token_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "secret\n").expect("write");
    let text = format!(
        "{BASE}admin: {{listen: '[::1]:0', token_file: {}}}\n",
        file.display()
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let quiet = crate::config::parse(&text).expect("valid");
    assert_eq!(quiet.admin.token_file_warning, None);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let warned = crate::config::parse(&text).expect("still valid");
    let warning = warned.admin.token_file_warning.expect("a warning");
    assert!(
        warning.contains("readable by every user (mode 644)"),
        "{warning}"
    );
    assert!(!warning.contains("secret"), "{warning}");
}

#[test]
fn unknown_keys_and_bad_durations_are_errors_with_paths() {
    let got = errors(&format!("{BASE}health_check: {{intervall: 1s}}\n"));
    assert!(
        got[0].contains("health_check") && got[0].contains("unknown field"),
        "{got:?}"
    );
    let got = errors(&format!("{BASE}health_check: {{interval: soon}}\n"));
    assert!(got[0].contains("health_check.interval"), "{got:?}");
}

#[test]
fn every_mistake_is_reported_each_with_its_path() {
    let text = "listen: [{addr: 127.0.0.1:8080}]\n\
        upstreams: [{id: a, addr: 127.0.0.1:1}, {id: b, addr: nowhere}, {id: c, adr: 127.0.0.1:3}]\n\
        colour: blue\n\
        health_check: {interval: soon}\n\
        timeouts: {connect: 1000d}\n\
        redis: {url: 'redis://h:1', bukets: 3}\n\
        server: {threads: 0}\n";
    let got = errors(text);
    for want in [
        "upstreams[1].addr: invalid socket address",
        "upstreams[2].adr: unknown field",
        "upstreams[2]: missing field `addr`",
        "colour: unknown field",
        "health_check.interval:",
        "timeouts.connect: must be from 1ms to 10m",
        "redis.bukets: unknown field",
        "server.threads: must be from 1 to 1024",
    ] {
        assert!(
            got.iter().any(|l| l.starts_with(want)),
            "want {want:?} in {got:?}"
        );
    }
    assert_eq!(got.len(), 8, "{got:?}");
}

#[test]
fn durations_and_numbers_are_bounded() {
    let cases = [
        (
            "timeouts: {read: 400000000000s}",
            "timeouts.read: must be from",
        ),
        (
            "redis: {url: 'redis://h:1', timeout: 1000000h}",
            "redis.timeout",
        ),
        (
            "passive_health: {max_recovery_time: 100000000d}",
            "passive_health.max_recovery_time",
        ),
        (
            "upstreams: [{id: a, addr: 127.0.0.1:1, weight: 4000000000}]",
            "upstreams[0].weight",
        ),
        ("redis: {url: 'redis://h:1', buckets: 0}", "redis.buckets"),
        (
            "failover: {max_retries: 99}",
            "failover.max_retries: must be from 0 to 15",
        ),
        ("affinity: {ttl: 0s}", "affinity.ttl"),
        (
            "timeouts: {client_idle: 1500ms}",
            "timeouts.client_idle: must be whole seconds",
        ),
    ];
    for (yaml, want) in cases {
        let text = if yaml.starts_with("upstreams") {
            format!("listen: [{{addr: 127.0.0.1:8080}}]\n{yaml}\n")
        } else {
            format!("{BASE}{yaml}\n")
        };
        let got = errors(&text);
        assert!(
            got.iter().any(|l| l.starts_with(want)),
            "want {want:?} in {got:?}"
        );
    }
}

#[test]
fn no_message_quotes_a_secret() {
    let secret = "hunter2-secret";
    for yaml in [
        format!("redis: {{url: ['redis://:{secret}@h:1']}}"),
        format!("redis: {{url: 'redis://:{secret}@h:1', timeout: 'redis://:{secret}@h'}}"),
        format!("redis: {{url: 'redis://:{secret}@h:1', buckets: '{secret}'}}"),
        format!("redis: {{cluster: 'redis://:{secret}@h:1'}}"),
        format!("redis: {{sentinel: {{master: m, nodes: ['redis://:{secret}@h:1']}}}}"),
        format!("redis: {{sentinel: {{master: m, nodes: ['h:1'], password: [{secret}]}}}}"),
        format!(
            "redis: {{sentinel: {{master: m, nodes: ['h:1'], password: {secret}}}, cluster: []}}"
        ),
        format!("affinity: {{hash_secret: [{secret}]}}"),
        format!("admin: {{token_file: [{secret}]}}"),
    ] {
        let got = errors(&format!("{BASE}{yaml}\n"));
        assert!(!got.is_empty(), "{yaml} is invalid");
        assert!(got.iter().all(|l| !l.contains(secret)), "{got:?}");
    }
    // A secret of the wrong type: serde quotes scalars in backticks.
    for (secret, shown) in [
        ("4242424243", "4242424243"),
        ("4242.4243", "4242.4243"),
        ("0x4242abcd", "1111665613"),
        ("true", "true"),
        ("[4242424243, 77]", "4242424243"),
        ("{k: 4242424243}", "4242424243"),
    ] {
        for yaml in [
            format!("affinity: {{hash_secret: {secret}}}"),
            format!("redis: {{url: {secret}}}"),
            format!("redis: {{url: 'redis://h:1', prefix: {secret}}}"),
            format!("redis: {{url: 'redis://h:1', username: {secret}}}"),
            format!("admin: {{token_file: {secret}}}"),
        ] {
            let got = errors(&format!("{BASE}{yaml}\n"));
            assert!(!got.is_empty(), "{yaml} is invalid");
            assert!(got.iter().all(|l| !l.contains(shown)), "{yaml}: {got:?}");
        }
    }
}

#[test]
fn redis_needs_one_target_and_valid_urls() {
    let cases = [
        (
            "redis: {url: 'redis://a:1', cluster: ['redis://b:2']}",
            "redis: needs exactly one of url and cluster",
        ),
        (
            "redis: {prefix: x}",
            "redis: needs one of url, cluster and sentinel",
        ),
        (
            "redis: {cluster: []}",
            "redis.cluster: needs at least one node URL",
        ),
        (
            "redis: {cluster: ['redis://ok:1', 'tcp://x']}",
            "redis.cluster[1]: must start with redis://",
        ),
        (
            "redis: {url: 'redis://h:1', timeout: 0s}",
            "redis.timeout: must be from 1ms to 1m",
        ),
    ];
    for (yaml, want) in cases {
        let got = errors(&format!("{BASE}{yaml}\n"));
        assert!(
            got.iter().any(|l| l.starts_with(want)),
            "want {want:?} in {got:?}"
        );
    }
    let ok = parse(&format!(
        "{BASE}redis: {{cluster: ['redis://a:1', 'redis://:pw@b:2']}}\n"
    ))
    .expect("valid");
    let debug = format!("{:?}", ok.redis);
    assert!(
        !debug.contains("pw@") && debug.contains("cluster of 2"),
        "{debug}"
    );
}

#[test]
fn a_sentinel_needs_its_master_and_nodes_and_goes_with_no_cluster() {
    let cases = [
        (
            "redis: {sentinel: {master: m, nodes: ['h:26379']}, cluster: ['redis://b:2']}",
            "redis.sentinel: cannot go with redis.cluster",
        ),
        (
            "redis: {sentinel: {nodes: ['h:26379']}}",
            "redis.sentinel.master: is required",
        ),
        (
            "redis: {sentinel: {master: '', nodes: ['h:26379']}}",
            "redis.sentinel.master: is required",
        ),
        (
            "redis: {sentinel: {master: 'my master', nodes: ['h:26379']}}",
            "redis.sentinel.master: must be one word",
        ),
        (
            "redis: {sentinel: {master: m}}",
            "redis.sentinel.nodes: needs at least one sentinel",
        ),
        (
            "redis: {sentinel: {master: m, nodes: []}}",
            "redis.sentinel.nodes: needs at least one sentinel",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['h']}}",
            "redis.sentinel.nodes[0]: must be host:port",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['h:1', 'h:0']}}",
            "redis.sentinel.nodes[1]: must be host:port",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['h:70000']}}",
            "redis.sentinel.nodes[0]: must be host:port",
        ),
        (
            "redis: {sentinel: {master: m, nodes: [':26379']}}",
            "redis.sentinel.nodes[0]: must be host:port",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['::1:26379']}}",
            "redis.sentinel.nodes[0]: must be host:port",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['[nope]:26379']}}",
            "redis.sentinel.nodes[0]: must be host:port",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['redis://h:26379']}}",
            "redis.sentinel.nodes[0]: must be host:port",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['h:1', 'h:1']}}",
            "redis.sentinel.nodes[1]: is listed twice",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['h:1'], password: ''}}",
            "redis.sentinel.password: must not be empty",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['h:1'], port: 1}}",
            "redis.sentinel.port: unknown field",
        ),
        (
            "redis: {sentinel: {master: m, nodes: ['h:1']}, url: 'tcp://h'}",
            "redis.url: must start with redis://",
        ),
        ("redis: {sentinel: [m]}", "redis.sentinel"),
    ];
    for (yaml, want) in cases {
        let got = errors(&format!("{BASE}{yaml}\n"));
        assert!(
            got.iter().any(|l| l.starts_with(want)),
            "{yaml}: want {want:?} in {got:?}"
        );
    }
    let ok = parse(&format!(
        "{BASE}redis: {{url: 'redis://:data-pw@mymaster/2', sentinel: {{master: mymaster, nodes: ['10.0.0.1:26379', 'sentinel-b.internal:26380', '[::1]:26381'], password: sentinel-pw}}}}\n"
    ))
    .expect("valid");
    let redis = ok.redis.expect("redis");
    let crate::config::RedisTarget::Sentinel(s) = &redis.target else {
        panic!("a sentinel target");
    };
    assert_eq!(s.master, "mymaster");
    assert_eq!(
        s.nodes,
        [
            ("10.0.0.1".to_string(), 26379),
            ("sentinel-b.internal".to_string(), 26380),
            ("::1".to_string(), 26381)
        ]
    );
    assert_eq!(s.password.as_deref(), Some("sentinel-pw"));
    assert_eq!(s.url.as_deref(), Some("redis://:data-pw@mymaster/2"));
    let debug = format!("{redis:?}");
    assert!(
        !debug.contains("pw") && debug.contains("mymaster") && debug.contains("of 3 sentinels"),
        "{debug}"
    );
    // Without a URL: plain, no password, database 0.
    let plain = parse(&format!(
        "{BASE}redis: {{sentinel: {{master: m, nodes: ['h:26379']}}}}\n"
    ))
    .expect("valid");
    assert!(matches!(
        plain.redis.map(|r| r.target),
        Some(crate::config::RedisTarget::Sentinel(s)) if s.url.is_none() && s.password.is_none()
    ));
}

#[test]
fn redis_url_is_never_echoed() {
    let got = errors(&format!(
        "{BASE}redis: {{url: 'http://user:hunter2@host'}}\n"
    ));
    assert!(got.iter().all(|l| !l.contains("hunter2")), "{got:?}");
    assert!(matches!(
        parse(&format!(
            "{BASE}redis: {{url: 'http://user:hunter2@host'}}\n"
        )),
        Err(ConfigError::Invalid(_))
    ));
}

/// `upstreams[].on_remove` and `failover.on_eject`: each value, its
/// default, and a wrong one named by its path.
#[test]
fn what_a_removal_and_an_ejection_do_to_pins() {
    use crate::config::{OnEject, OnRemove};
    let two = "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:9001, on_remove: purge}, {id: b, addr: 127.0.0.1:9002, on_remove: move}, {id: c, addr: 127.0.0.1:9003}]\n";
    let c = parse(two).expect("valid");
    let got: Vec<OnRemove> = ["a", "b", "c", "unknown"]
        .iter()
        .map(|id| c.on_remove(id))
        .collect();
    let want = [
        OnRemove::Purge,
        OnRemove::Move,
        OnRemove::Move,
        OnRemove::Move,
    ];
    assert_eq!(got, want);
    assert_eq!(c.failover.on_eject, OnEject::Keep, "the default");
    for (mode, want) in [("keep", OnEject::Keep), ("move", OnEject::Move)] {
        let c = parse(&format!("{BASE}failover: {{on_eject: {mode}}}\n")).expect("valid");
        assert_eq!(c.failover.on_eject, want, "{mode}");
    }
    let cases = [
        (
            "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:9001, on_remove: drop}]\n".to_string(),
            "upstreams[0].on_remove: \"drop\": must be move or purge",
        ),
        (
            format!("{BASE}failover: {{on_eject: purge}}\n"),
            "failover.on_eject: \"purge\": must be keep or move",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(errors(&text), [want], "{text}");
    }
}
