"""Corral's exception tree and the closed catalog of Lambda wire error types.

    CorralError                      anything Corral raises on purpose
    └── LambdaApiError               rendered to clients in Lambda's wire format
        ├── InvalidParameterValue    400
        ├── InvalidRequestContent    400
        ├── ResourceNotFound         404
        ├── ResourceConflict         409
        ├── PreconditionFailed       412
        ├── RequestEntityTooLarge    413
        ├── UnsupportedMediaType     415
        ├── TooManyRequests          429  (carries Reason and Retry-After)
        ├── ServiceError             500
        ├── AccessDenied / Unrecognized client / InvalidSignature  403
        └── ... one subclass per wire code, nothing else

The API layer renders every `LambdaApiError` in exactly one place (`api/errors.py`).
Third-party exceptions are translated into this tree at the boundary with `raise ... from`.

`FunctionErrorType` lists the error types the *platform* reports inside an invoke result
(HTTP 200 + X-Amz-Function-Error); these never become HTTP errors.
"""

from __future__ import annotations

from enum import StrEnum


class CorralError(Exception):
    """Base of every exception Corral raises deliberately."""


class LambdaApiError(CorralError):
    """An error with a Lambda wire code, an HTTP status and a message."""

    code: str = "ServiceException"
    status: int = 500
    message_key: str = "Message"  # botocore reads either `message` or `Message`

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, object]:
        return {"Type": "User" if self.status < 500 else "Service", self.message_key: self.message}

    def headers(self) -> dict[str, str]:
        return {}


def _error(code: str, status: int, message_key: str = "Message") -> type[LambdaApiError]:
    return type(code, (LambdaApiError,), {"code": code, "status": status, "message_key": message_key})


InvalidParameterValueException = _error("InvalidParameterValueException", 400, "message")
InvalidRequestContentException = _error("InvalidRequestContentException", 400, "message")
ResourceNotFoundException = _error("ResourceNotFoundException", 404)
ResourceConflictException = _error("ResourceConflictException", 409, "message")
PreconditionFailedException = _error("PreconditionFailedException", 412, "message")
RequestEntityTooLargeException = _error("RequestEntityTooLargeException", 413, "message")
UnsupportedMediaTypeException = _error("UnsupportedMediaTypeException", 415, "message")
CodeStorageExceededException = _error("CodeStorageExceededException", 400, "message")
InvalidZipFileException = _error("InvalidZipFileException", 502)
InvalidRuntimeException = _error("InvalidRuntimeException", 502)
ServiceException = _error("ServiceException", 500)
UnrecognizedClientException = _error("UnrecognizedClientException", 403, "message")
InvalidSignatureException = _error("InvalidSignatureException", 403, "message")
IncompleteSignatureException = _error("IncompleteSignatureException", 403, "message")
AccessDeniedException = _error("AccessDeniedException", 403, "Message")
UnknownOperationException = _error("UnknownOperationException", 404, "message")
ProvisionedConcurrencyConfigNotFoundException = _error(
    "ProvisionedConcurrencyConfigNotFoundException", 404, "message"
)


class TooManyRequestsException(LambdaApiError):
    code = "TooManyRequestsException"
    status = 429
    message_key = "message"

    def __init__(self, message: str, reason: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {**super().body(), "Reason": self.reason}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ThrottleReason(StrEnum):
    """`Reason` values of TooManyRequestsException, as botocore models them."""

    CONCURRENT_INVOCATION_LIMIT = "ConcurrentInvocationLimitExceeded"
    RESERVED_FUNCTION_CONCURRENCY = "ReservedFunctionConcurrentInvocationLimitExceeded"
    CALLER_RATE_LIMIT = "CallerRateLimitExceeded"


class FunctionErrorType(StrEnum):
    """Platform-reported error types delivered inside an invoke result (HTTP 200)."""

    TIMEOUT = "Sandbox.Timedout"
    EXIT = "Runtime.ExitError"
    OUT_OF_MEMORY = "Runtime.OutOfMemory"
    IMPORT_MODULE = "Runtime.ImportModuleError"
    HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
    RESPONSE_TOO_LARGE = "Function.ResponseSizeTooLarge"
    SANDBOX_FAILURE = "Sandbox.Failure"
    UNKNOWN = "Runtime.Unknown"


class SandboxError(CorralError):
    """The sandbox could not be created or has failed; the instance is unusable."""


class ConfigError(CorralError):
    """Operator configuration is invalid."""
