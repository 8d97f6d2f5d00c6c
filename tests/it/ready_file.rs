//! relay-edge binds port 0 itself, in both thread models and for the admin
//! listener, and says where in its ready file (`RELAY_EDGE_READY_FILE`).

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_thread_models_bind_port_0_and_say_where() {
    let ups = upstreams(&["relay-a"]).await;
    for model in ["workers", "pingora"] {
        let edge = TestEdge::new(&upstreams_yaml(&ups))
            .threads(1)
            .server(&format!("thread_model: {model}"))
            .start()
            .await;
        assert!(edge.addr.port() != 0 && edge.admin.port() != 0, "{model}");
        assert_eq!(
            edge.get("/v1/x", &[]).await.upstream(),
            "relay-a",
            "{model}"
        );
        let text = std::fs::read_to_string(edge.ready_file()).expect("the ready file");
        let ready: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            ready,
            serde_json::json!({
                "listeners": [edge.addr.to_string()],
                "admin": edge.admin.to_string(),
            }),
            "{model}"
        );
    }
}
