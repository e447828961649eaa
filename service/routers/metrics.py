"""GET /metrics: Prometheus text exposition of the app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Request counts and latencies by route, the inference queue and batches, the served model,
    reloads, and process memory, for Prometheus to scrape."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
