"""schemathesis hooks for scripts/contract_test.sh (loaded through SCHEMATHESIS_HOOKS)."""

import json

import schemathesis

INVALID_IMAGE = "urn:gradcam-serve:problem:invalid-image"


@schemathesis.check
def positive_400_only_for_undecodable_images(ctx, response, case):
    """A schema-valid request may be refused with 400 only because its image bytes do not
    decode (see scripts/contract-test.toml): any other 400 for valid data is a defect."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    try:
        kind = json.loads(response.content).get("type")
    except (ValueError, AttributeError):
        kind = None
    if kind != INVALID_IMAGE:
        raise AssertionError(
            f"Schema-valid request refused with 400 {kind!r}; only {INVALID_IMAGE!r} "
            f"(image bytes that do not decode) is expected for valid data"
        )
    return None


# Refusals of schema-valid requests that depend on another field or on the server's settings,
# which OpenAPI cannot express: `top_k_maps` together with `target` (the spec's text says
# "give it or target, not both"), and `method=scorecam` on a server whose
# `explain.allow_scorecam` is off (the default; the spec's text says so). Each is a 422 with
# the problem's detail naming the option; any other 422 for valid data is a defect.
DOCUMENTED_422 = (
    ("top_k_maps = ", "give it or `target`, not both"),
    ("method = ", "does not allow it"),
)


@schemathesis.check
def positive_422_only_for_documented_conflicts(ctx, response, case):
    """A schema-valid request may get 422 only for the cross-field and server-setting
    refusals above (see scripts/contract-test.toml)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        detail = json.loads(response.content).get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    if not any(detail.startswith(p) and text in detail for p, text in DOCUMENTED_422):
        raise AssertionError(f"Schema-valid request refused with 422: {detail!r}")
    return None
