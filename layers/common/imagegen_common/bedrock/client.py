"""Calling a Bedrock image model and turning every failure into one of our typed errors.

Sources checked:
- botocore's bedrock-runtime service model (``InvokeModel``: ``POST /model/{modelId}/invoke``;
  errors AccessDeniedException 403, ResourceNotFoundException 404, ThrottlingException 429,
  ModelTimeoutException 408, InternalServerException 500, ServiceUnavailableException 503,
  ValidationException 400, ServiceQuotaExceededException 400, ModelNotReadyException 429,
  ModelErrorException 424).
- Amazon Bedrock User Guide, "Troubleshooting Amazon Bedrock API Error Codes",
  https://docs.aws.amazon.com/bedrock/latest/userguide/troubleshooting-api-error-codes.html
- Messages Bedrock really sends for models that cannot be used, as reported in public issues:
  ResourceNotFoundException "This model version has reached the end of its life. Please refer
  to the AWS documentation for more details." (e.g. aws-samples/amazon-bedrock-ai-karaoke#21);
  ResourceNotFoundException "Access denied. This Model is marked by provider as Legacy and you
  have not been actively using the model in the last 30 days. ..." (e.g.
  aws-samples/amazon-bedrock-workshop#386); ValidationException "Invocation of model ID ... with
  on-demand throughput isn't supported. Retry your request with the ID or ARN of an inference
  profile ..." (0xPlaygrounds/rig#2309); ValidationException "Operation not allowed" for legacy
  models out of extended access (BerriAI/litellm#28704); ValidationException "The provided model
  identifier is invalid."; and Bedrock's own content filters (documented for Amazon's image
  models) ValidationException "This request has been blocked by our content filters. ...".
  Stability models report filtering in ``finish_reasons`` instead (see ``stability``).

Mapping (a content filter or bad input never becomes ModelUnavailableError):
- ThrottlingException, ServiceQuotaExceededException -> ModelThrottledError (retried with backoff)
- ModelTimeoutException, ServiceUnavailableException, InternalServerException,
  ModelNotReadyException, connection errors and read timeouts -> ModelTransientError
- AccessDeniedException, ResourceNotFoundException, ValidationException about the model's
  availability -> ModelUnavailableError (the workflow may fall back to the GPU backend)
- ValidationException "blocked by our content filters" -> ContentFilteredError
- ModelErrorException, any other ValidationException, an unparseable answer -> ModelError
"""

from __future__ import annotations

import json
import re
from typing import Any

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from imagegen_common.bedrock.base import GeneratedImage
from imagegen_common.bedrock.registry import adapter_for
from imagegen_common.errors import (
    ContentFilteredError,
    ImageGenError,
    ModelError,
    ModelThrottledError,
    ModelTransientError,
    ModelUnavailableError,
)
from imagegen_common.models import OutputFormat

_THROTTLING_CODES = frozenset({"ThrottlingException", "ServiceQuotaExceededException"})
_TRANSIENT_CODES = frozenset(
    {
        "ModelTimeoutException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelNotReadyException",
    }
)
_UNAVAILABLE_CODES = frozenset({"AccessDeniedException", "ResourceNotFoundException"})
_CONTENT_FILTER = re.compile(r"content filters?\b", re.IGNORECASE)
_MODEL_UNAVAILABLE = re.compile(
    r"end of its life"
    r"|marked by provider as legacy"
    r"|on-demand throughput isn.?t supported"
    r"|model identifier is invalid"
    r"|operation not allowed"
    r"|don.?t have access to the model",
    re.IGNORECASE,
)


def generate_with_bedrock(
    runtime_client: Any,
    model_id: str,
    prompt: str,
    negative_prompt: str | None,
    width: int,
    height: int,
    seed: int,
    output_format: OutputFormat = OutputFormat.PNG,
) -> GeneratedImage:
    """Make one image with a Bedrock model.

    Args:
        runtime_client: a boto3 ``bedrock-runtime`` client.
        model_id: a model id of the registry (:data:`~imagegen_common.bedrock.ADAPTERS`).
        prompt, negative_prompt: the texts; ``negative_prompt`` may be None or empty.
        width, height: the requested size in pixels (Stability models map it to an aspect ratio).
        seed: the seed to send; checked against the model's range.
        output_format: the file format to ask for (one of the adapter's ``output_formats``).

    Raises:
        InvalidPromptError: the request breaks one of the model's limits (not sent).
        ContentFilteredError, ModelError, ModelThrottledError, ModelTransientError,
        ModelUnavailableError: the call failed; see the module docstring for the mapping.
    """
    # 1. Check inputs
    adapter = adapter_for(model_id)
    adapter.check_request(prompt, negative_prompt, width, height)
    body = adapter.build_body(prompt, negative_prompt, width, height, seed, output_format)
    # 2. Invoke the model
    try:
        response = runtime_client.invoke_model(
            modelId=model_id,
            body=json.dumps(body),
            accept="application/json",
            contentType="application/json",
        )
        payload = json.loads(response["body"].read())
    except ClientError as e:
        raise error_from_client_error(e, model_id) from e
    except (HTTPClientError, ConnectionError) as e:
        raise ModelTransientError(f"Bedrock could not be reached for {model_id}: {e}") from e
    except ValueError as e:
        raise ModelError(f"{model_id} answered with a body that is not JSON: {e}") from e
    if not isinstance(payload, dict):
        raise ModelError(f"{model_id} answered with a JSON {type(payload).__name__}, not an object")
    # 3. Parse the response
    return adapter.parse_response(payload, output_format)


def error_from_client_error(error: ClientError, model_id: str) -> ImageGenError:
    """Our typed error for a botocore ClientError raised by ``InvokeModel``."""
    details = error.response.get("Error", {})
    code = str(details.get("Code", ""))
    message = str(details.get("Message", "")) or str(error)
    text = f"{model_id}: {code}: {message}"
    if code in _THROTTLING_CODES:
        return ModelThrottledError(text)
    if code in _TRANSIENT_CODES:
        return ModelTransientError(text)
    if code == "ValidationException" and _CONTENT_FILTER.search(message):
        return ContentFilteredError(message)
    if code in _UNAVAILABLE_CODES:
        return ModelUnavailableError(text)
    if code == "ValidationException" and _MODEL_UNAVAILABLE.search(message):
        return ModelUnavailableError(text)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int) and status >= 500:
        return ModelTransientError(text)
    return ModelError(text)
