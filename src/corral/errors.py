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


class InvalidParameterValueException(LambdaApiError):
    code = "InvalidParameterValueException"
    status = 400
    message_key = "message"


class InvalidRequestContentException(LambdaApiError):
    code = "InvalidRequestContentException"
    status = 400
    message_key = "message"


class ResourceNotFoundException(LambdaApiError):
    code = "ResourceNotFoundException"
    status = 404


class ResourceConflictException(LambdaApiError):
    code = "ResourceConflictException"
    status = 409
    message_key = "message"


class PreconditionFailedException(LambdaApiError):
    code = "PreconditionFailedException"
    status = 412
    message_key = "message"


class RequestEntityTooLargeException(LambdaApiError):
    code = "RequestEntityTooLargeException"
    status = 413
    message_key = "message"


class UnsupportedMediaTypeException(LambdaApiError):
    code = "UnsupportedMediaTypeException"
    status = 415
    message_key = "message"


class CodeStorageExceededException(LambdaApiError):
    code = "CodeStorageExceededException"
    status = 400
    message_key = "message"


class InvalidZipFileException(LambdaApiError):
    code = "InvalidZipFileException"
    status = 502


class InvalidRuntimeException(LambdaApiError):
    code = "InvalidRuntimeException"
    status = 502


class ServiceException(LambdaApiError):
    code = "ServiceException"
    status = 500


class UnrecognizedClientException(LambdaApiError):
    code = "UnrecognizedClientException"
    status = 403
    message_key = "message"


class InvalidSignatureException(LambdaApiError):
    code = "InvalidSignatureException"
    status = 403
    message_key = "message"


class IncompleteSignatureException(LambdaApiError):
    code = "IncompleteSignatureException"
    status = 403
    message_key = "message"


class MissingAuthenticationTokenException(LambdaApiError):
    code = "MissingAuthenticationTokenException"
    status = 403
    message_key = "message"


class AccessDeniedException(LambdaApiError):
    code = "AccessDeniedException"
    status = 403


class UnknownOperationException(LambdaApiError):
    code = "UnknownOperationException"
    status = 404
    message_key = "message"


class ProvisionedConcurrencyConfigNotFoundException(LambdaApiError):
    code = "ProvisionedConcurrencyConfigNotFoundException"
    status = 404
    message_key = "message"


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
