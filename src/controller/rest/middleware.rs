//! The per-operation wrapper of every REST operation: a request body limit
//! and JSON error bodies for whatever fails before or in the handler.

use poem::http::header::CONTENT_LENGTH;
use poem::http::StatusCode;
use poem::{Body, Endpoint, IntoResponse, Request, Response};

use super::error::{error_from_poem, error_response};

/// The largest REST request body accepted (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

fn too_large() -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// Endpoint of [`rest_op`].
pub struct RestOp<E> {
    inner: E,
    max_body: usize,
}

impl<E: Endpoint> Endpoint for RestOp<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()));
        match declared {
            Some(None) => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    "invalid Content-Length header",
                ))
            }
            Some(Some(len)) if len > self.max_body as u64 => return Ok(too_large()),
            Some(Some(_)) => {}
            // No Content-Length (chunked): read it here, within the limit.
            None => match req.take_body().into_bytes_limit(self.max_body).await {
                Ok(bytes) => req.set_body(Body::from_bytes(bytes)),
                Err(poem::error::ReadBodyError::PayloadTooLarge) => return Ok(too_large()),
                Err(e) => {
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_argument",
                        &format!("cannot read request body: {e}"),
                    ))
                }
            },
        }
        match self.inner.call(req).await {
            Ok(out) => Ok(out.into_response()),
            Err(err) => Ok(error_from_poem(err)),
        }
    }
}

/// Wraps one REST operation (every route of [`super::api`]): bodies above
/// [`MAX_BODY_BYTES`] get `413 payload_too_large`, and every error (bad
/// JSON, bad parameters, wrong content type, missing token, handler errors)
/// comes out as a JSON error body.
pub fn rest_op<E: Endpoint>(ep: E) -> RestOp<E> {
    RestOp {
        inner: ep,
        max_body: MAX_BODY_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use poem::endpoint::make;
    use poem::http::Method;

    use super::*;
    use crate::model::dto::ErrorBody;

    async fn post(body: Body, content_length: Option<usize>) -> Response {
        let ep = rest_op(make(|req: Request| async move {
            let bytes = req.into_body().into_bytes().await?;
            Ok::<_, poem::Error>(bytes.len().to_string())
        }));
        let mut req = Request::builder().method(Method::POST).uri_str("/");
        if let Some(len) = content_length {
            req = req.header(CONTENT_LENGTH, len);
        }
        ep.get_response(req.body(body)).await
    }

    fn stream(data: Vec<u8>) -> Body {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
            .chunks(64 * 1024)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        Body::from_bytes_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn declared_large_bodies_are_413() {
        let big = vec![b'x'; MAX_BODY_BYTES + 1];
        let resp = post(Body::from_vec(big), Some(MAX_BODY_BYTES + 1)).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let b: ErrorBody = resp.into_body().into_json().await.unwrap();
        assert_eq!(b.code, "payload_too_large");
    }

    #[tokio::test]
    async fn streamed_large_bodies_are_413() {
        let resp = post(stream(vec![b'x'; MAX_BODY_BYTES + 1]), None).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let b: ErrorBody = resp.into_body().into_json().await.unwrap();
        assert_eq!(b.code, "payload_too_large");
    }

    #[tokio::test]
    async fn bodies_within_the_limit_pass() {
        let resp = post(Body::from_string("hello".into()), Some(5)).await;
        assert_eq!(resp.into_body().into_string().await.unwrap(), "5");
        let resp = post(stream(vec![b'x'; MAX_BODY_BYTES]), None).await;
        let expected = MAX_BODY_BYTES.to_string();
        assert_eq!(resp.into_body().into_string().await.unwrap(), expected);
    }
}
