"""API errors in the shape Vapi's (NestJS) API answers with: `{message, error, statusCode}`.

Vapi's SDKs and the integrations written against them read `message`; for validation errors it
is a list with one entry per problem, each naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

__all__ = ["ApiError", "install_error_handlers", "not_found", "validation_messages"]


class ApiError(Exception):
    def __init__(self, status: int, message: str | list[str]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(kind: str) -> ApiError:
    # The same answer whether the id exists in another tenant or nowhere: no existence leaks.
    return ApiError(404, f"{kind} not found")


def validation_messages(errors: Sequence[Any], *, prefix: Sequence[str | int] = ()) -> list[str]:
    """`model.provider: Input should be 'local', 'openai', …` for each pydantic error."""
    out = []
    for error in errors:
        loc = [*prefix, *error.get("loc", ())]
        # FastAPI prefixes where the value came from; the client only cares which field.
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        field = ".".join(str(part) for part in loc) or "body"
        out.append(f"{field}: {error.get('msg', 'invalid')}")
    return out


def _response(status: int, message: str | list[str]) -> JSONResponse:
    error = HTTPStatus(status).phrase
    return JSONResponse({"message": message, "error": error, "statusCode": status}, status)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _response(exc.status, exc.message)


async def _request_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _response(422, validation_messages(exc.errors()))


async def _model_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return _response(422, validation_messages(exc.errors()))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ValidationError, _model_invalid)
