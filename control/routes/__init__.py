"""The tenant API at Vapi's paths: every route here needs an API key."""

from __future__ import annotations

from fastapi import APIRouter

from control.routes.analytics import router as analytics
from control.routes.assistants import router as assistants
from control.routes.calls import router as calls
from control.routes.credentials import router as credentials
from control.routes.phone_numbers import router as phone_numbers
from control.routes.tools import router as tools
from control.routes.webhook_deliveries import router as webhook_deliveries

__all__ = ["api_router"]

api_router = APIRouter()
for _router in (
    assistants, tools, phone_numbers, calls, credentials, webhook_deliveries, analytics,
):  # fmt: skip
    api_router.include_router(_router)
