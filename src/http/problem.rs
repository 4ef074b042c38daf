//! Every failure as one RFC 9457 `application/problem+json` body, with its status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::preprocess::DecodeError;

/// RFC 9457 problem details.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:gradcam-serve:problem:invalid-option",
    "title": "Invalid option",
    "status": 422,
    "detail": "top_k = 0: must be an integer in 1..=1000"
}))]
pub struct Problem {
    /// A URN naming the kind of problem; stable, for programs to match on.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What exactly was wrong with this request.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request has no file part named `image`")]
    MissingImage,
    #[error("the request has more than one part named `image`; send one image per request")]
    DuplicateImage,
    #[error("{0}")]
    BadMultipart(String),
    #[error("{0}")]
    BadImage(DecodeError),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{name} = {value:?}: {reason}")]
    InvalidOption {
        name: String,
        value: String,
        reason: String,
    },
    #[error("all {capacity} places in the queue are taken; retry in a moment")]
    Overloaded { capacity: usize },
    #[error("the model is still loading")]
    NotReady,
    #[error("the upload did not arrive within {0} s")]
    UploadTimeout(u64),
    #[error("the explanation took longer than {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("{0}")]
    NotAcceptable(String),
    /// The request is valid, but the loaded model cannot do what it asks (a method that
    /// needs what the model, or this server, lacks).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MissingImage | DuplicateImage | BadMultipart(_) => StatusCode::BAD_REQUEST,
            BadImage(DecodeError::TooManyPixels { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            BadImage(_) => StatusCode::BAD_REQUEST,
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            InvalidOption { .. } | Unsupported(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Overloaded { .. } | NotReady => StatusCode::SERVICE_UNAVAILABLE,
            UploadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NotFound(_) => StatusCode::NOT_FOUND,
            NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        use ApiError::*;
        match self {
            MissingImage => ("missing-image", "No image in the request"),
            DuplicateImage => ("duplicate-image", "More than one image in the request"),
            BadMultipart(_) => ("malformed-multipart", "Malformed multipart body"),
            BadImage(DecodeError::TooManyPixels { .. }) => ("image-too-large", "Image too large"),
            BadImage(_) => ("invalid-image", "Not a decodable image"),
            TooLarge(_) => ("payload-too-large", "Upload too large"),
            UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            InvalidOption { .. } => ("invalid-option", "Invalid option"),
            Overloaded { .. } => ("overloaded", "Server overloaded"),
            NotReady => ("not-ready", "Model not ready"),
            UploadTimeout(_) => ("upload-timeout", "Upload too slow"),
            Timeout(_) => ("timeout", "Explanation timed out"),
            Unauthorized(_) => ("unauthorized", "Unauthorized"),
            NotFound(_) => ("not-found", "Not found"),
            NotAcceptable(_) => ("not-acceptable", "Not acceptable"),
            Unsupported(_) => ("unsupported", "Not supported for this model"),
            Internal(_) => ("internal", "Internal error"),
        }
    }

    pub fn invalid(name: &str, value: &str, reason: impl Into<String>) -> Self {
        ApiError::InvalidOption {
            name: name.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub fn to_problem(&self) -> Problem {
        let (slug, title) = self.slug_and_title();
        Problem {
            kind: format!("urn:gradcam-serve:problem:{slug}"),
            title: title.into(),
            status: self.status().as_u16(),
            detail: self.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error()
            && !matches!(self, ApiError::Overloaded { .. } | ApiError::NotReady)
        {
            tracing::error!(status = status.as_u16(), "{self}");
        }
        let body = serde_json::to_vec(&self.to_problem()).expect("problem serialises");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            ApiError::Overloaded { .. } | ApiError::NotReady => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gradcam-serve\""),
                );
            }
            _ => {}
        }
        response
    }
}
