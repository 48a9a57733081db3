//! The slotq HTTP API as the load generator uses it: one pooled `reqwest` client carrying a
//! `service` token (allowed to act for any patient, exempt from per-IP rate limits), and for
//! the submissions that every scenario times, a leaner pool of bare hyper HTTP/1.1
//! connections ([`Submitter`]): the load generator shares the two cores with what it
//! measures, and reqwest's per-request work (URL parsing, default headers, its pool and
//! timeout layers) cost about a third of the generator's CPU (loadtest/README.md, change 15).

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A booking request as `GET /v1/booking-requests/{id}` shows it.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestView {
    /// Request id.
    pub id: Uuid,
    /// `queued`, `rejected`, or the booking's status.
    pub status: String,
    /// The booking, once held.
    pub booking_id: Option<Uuid>,
    /// Rejection reason.
    pub reason: Option<String>,
    /// When the hold runs out.
    pub hold_expires_at: Option<DateTime<Utc>>,
}

impl RequestView {
    /// Still waiting for a worker.
    pub fn is_queued(&self) -> bool {
        self.status == "queued"
    }
}

/// What `POST /v1/booking-requests` answered.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// HTTP status.
    pub status: u16,
    /// Request id (on `202`).
    pub id: Option<Uuid>,
    /// Problem `code` (on `409`).
    pub code: Option<String>,
}

#[derive(Serialize)]
struct SubmitBody {
    patient_id: Uuid,
    practitioner_id: Uuid,
    slot_start: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Answer {
    id: Option<Uuid>,
    code: Option<String>,
}

/// The API of one slotq stack.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    payment_secret: Option<String>,
    submitter: std::sync::Arc<Submitter>,
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// Idle keep-alive HTTP/1.1 connections to ingress, each used by one request at a time.
pub struct Submitter {
    authority: String,
    host: hyper::header::HeaderValue,
    authorization: hyper::header::HeaderValue,
    idle: std::sync::Mutex<Vec<hyper::client::conn::http1::SendRequest<Body>>>,
}

impl Submitter {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = base.parse().context("parsing the ingress URL")?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "the load generator speaks plain HTTP to ingress, not {base}"
        );
        let authority = uri
            .authority()
            .context("the ingress URL has no host")?
            .to_string();
        let authority = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            host: hyper::header::HeaderValue::from_str(&authority)?,
            authorization: hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token is not a valid header value")?,
            authority,
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    async fn connection(&self) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Body>> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            match idle {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// `POST path` with a JSON body → (status, body). `Err` only when no answer came back.
    async fn post_json(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, hyper::body::Bytes)> {
        use http_body_util::BodyExt;
        let mut sender = self.connection().await?;
        sender.ready().await?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, self.host.clone())
            .header(hyper::header::AUTHORIZATION, self.authorization.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Body::new(body.into()))?;
        let response = tokio::time::timeout(Duration::from_secs(60), async {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        })
        .await
        .context("no answer within 60 s")??;
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sender);
        Ok(response)
    }
}

impl Api {
    /// A client for `base` (`http://127.0.0.1:8080`) sending `token`.
    pub fn new(base: &str, token: &str, payment_secret: Option<String>) -> anyhow::Result<Self> {
        let mut headers = header::HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token is not a valid header value")?,
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            // Keep every connection of the busiest scenario (storm) alive between requests.
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        let base = base.trim_end_matches('/').to_owned();
        Ok(Self {
            http,
            submitter: std::sync::Arc::new(Submitter::new(&base, token)?),
            base,
            payment_secret,
        })
    }

    /// The stack's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/booking-requests`. `Err` only when no HTTP answer came back.
    pub async fn submit(
        &self,
        patient_id: Uuid,
        practitioner_id: Uuid,
        slot_start: DateTime<Utc>,
    ) -> anyhow::Result<Submitted> {
        let body = serde_json::to_vec(&SubmitBody {
            patient_id,
            practitioner_id,
            slot_start,
        })?;
        let (status, bytes) = self
            .submitter
            .post_json("/v1/booking-requests", body)
            .await?;
        let answer: Option<Answer> = serde_json::from_slice(&bytes).ok();
        Ok(Submitted {
            status,
            id: answer.as_ref().and_then(|a| a.id).filter(|_| status == 202),
            code: answer.and_then(|a| a.code),
        })
    }

    /// `GET /v1/booking-requests/{id}?wait=S`: the view, or the HTTP status when not `200`.
    pub async fn poll(
        &self,
        id: Uuid,
        wait_secs: u32,
    ) -> reqwest::Result<Result<RequestView, u16>> {
        let res = self
            .http
            .get(format!(
                "{}/v1/booking-requests/{id}?wait={wait_secs}",
                self.base
            ))
            .send()
            .await?;
        if res.status() != StatusCode::OK {
            return Ok(Err(res.status().as_u16()));
        }
        let bytes = res.bytes().await?;
        Ok(serde_json::from_slice(&bytes).map_err(|_| 200))
    }

    /// Long-polls until the request is decided or `timeout` passes; returns the last view.
    pub async fn decision(&self, id: Uuid, timeout: Duration) -> anyhow::Result<RequestView> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = left.as_secs().clamp(1, 10) as u32;
            match self.poll(id, wait).await? {
                Ok(v) if !v.is_queued() => return Ok(v),
                Ok(v) if left.is_zero() => return Ok(v),
                Ok(_) => {}
                Err(status) if left.is_zero() => {
                    anyhow::bail!("poll of {id} answered {status}")
                }
                // A transient answer (503 while shedding): try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// `POST /v1/bookings/{id}/cancel` → HTTP status.
    pub async fn cancel(&self, booking_id: Uuid) -> reqwest::Result<u16> {
        let res = self
            .http
            .post(format!("{}/v1/bookings/{booking_id}/cancel", self.base))
            .json(&serde_json::json!({"reason": "load test"}))
            .send()
            .await?;
        Ok(res.status().as_u16())
    }

    /// A signed `payment.succeeded` webhook for `booking_id` → (HTTP status, `outcome`).
    pub async fn pay(&self, booking_id: Uuid) -> anyhow::Result<(u16, Option<String>)> {
        let secret = self
            .payment_secret
            .as_deref()
            .context("PAYMENT_WEBHOOK_SECRET is needed to pay holds")?;
        let body = serde_json::to_vec(&serde_json::json!({
            "id": format!("evt_{}", Uuid::new_v4().simple()),
            "type": "payment.succeeded",
            "booking_id": booking_id,
            "amount": 4500,
            "currency": "EUR",
        }))?;
        let signature = slotq_security::payment_signature::sign(
            secret.as_bytes(),
            Utc::now().timestamp(),
            &body,
        );
        let res = self
            .http
            .post(format!("{}/v1/payments/webhook", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .header("payment-signature", signature)
            .body(body)
            .send()
            .await?;
        let status = res.status().as_u16();
        let v: serde_json::Value = res.json().await.unwrap_or_default();
        Ok((status, v["outcome"].as_str().map(str::to_owned)))
    }

    /// `POST /v1/patients` with a unique e-mail address → the patient id.
    pub async fn create_patient(&self, tag: &str) -> anyhow::Result<Uuid> {
        let email = format!("{tag}-{}@loadtest.invalid", Uuid::new_v4().simple());
        let res = self
            .http
            .post(format!("{}/v1/patients", self.base))
            .json(&serde_json::json!({"name": "Load Test", "email": email, "country_code": "FR"}))
            .send()
            .await?;
        let status = res.status();
        let body = res.text().await?;
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "POST /v1/patients answered {status}: {body}"
        );
        let a: Answer = serde_json::from_str(&body)?;
        a.id.context("POST /v1/patients answered without an id")
    }

    /// `GET path` → (HTTP status, body bytes).
    pub async fn get(&self, path_and_query: &str) -> reqwest::Result<(u16, usize)> {
        let res = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await?;
        Ok((status, bytes.len()))
    }

    /// Waits until `/readyz` answers 200 (or `timeout`).
    pub async fn ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                other if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("{}/readyz is not ready: {other:?}", self.base)
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
