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
