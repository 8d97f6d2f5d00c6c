//! The admin service: its own Pingora service on its own listener.
//!
//! [`handler`] holds the routes as a pure async function from an
//! [`handler::AdminRequest`] to an [`handler::AdminResponse`], tested
//! without sockets; [`views`] holds the JSON shapes it answers with (and
//! `relay-edge ctl` reads); [`AdminService`] adapts it to Pingora's `ServeHttp`.

pub mod handler;
pub mod views;

use crate::state::Edge;
use async_trait::async_trait;
use handler::{AdminRequest, AdminResponse};
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

/// Largest admin request body read (a session PUT is a few bytes).
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub struct AdminService {
    pub edge: Arc<Edge>,
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, AdminResponse> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ADMIN_BODY {
                    return Err(AdminResponse::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(AdminResponse::error(
                    StatusCode::BAD_REQUEST,
                    "unreadable request body",
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = match read_body(session).await {
            Err(reply) => reply,
            Ok(body) => {
                let req = session.req_header();
                let auth = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                handler::handle(
                    &self.edge,
                    AdminRequest {
                        method: req.method.as_str(),
                        path: req.uri.path(),
                        query: req.uri.query(),
                        authorization: auth,
                        body: &body,
                    },
                )
                .await
            }
        };
        let len = reply.body.len();
        Response::builder()
            .status(reply.status)
            .header(http::header::CONTENT_TYPE, reply.content_type)
            .header(http::header::CONTENT_LENGTH, len)
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(reply.body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
