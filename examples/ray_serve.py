"""Online anomaly scoring with Ray Serve: a deployment holding one headclip.Detector per
replica, batching concurrent requests into one ``predict`` call.

    serve run examples.ray_serve:app weights=ViT-L-14-336px.pt params=params.safetensors
    curl --data-binary @part.png http://127.0.0.1:8000/detect

A request's body is one encoded image (PNG, JPEG, TIFF, BMP, GIF, WebP); the reply is
``headclip serve``'s ``/v1/detect`` fields (score, global_score, pixel_score, threshold,
anomalous, width, height, map_max, map_mean), or status 422 with ``error`` for a bad image,
which does not fail the batch it was scored in. Scale with ``num_replicas`` (one model each)
and ``threads`` (libtorch threads per replica).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

FIELDS = ("score", "global_score", "pixel_score", "width", "height", "map_max", "map_mean")


@serve.deployment(ray_actor_options={"num_cpus": 1})
class HeadclipDetector:
    def __init__(
        self,
        weights: str,
        params: str | None = None,
        threads: int = 1,
        threshold: float = 0.5,
        image_size: int | None = None,
    ) -> None:
        import headclip

        headclip.set_threads(threads)
        self.detector = headclip.Detector(weights, params=params, image_size=image_size)
        self.threshold = threshold

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def detect(self, images: list[bytes]) -> list[dict[str, Any]]:
        import headclip

        # predict releases the GIL; a worker thread keeps the replica's event loop free.
        results = await asyncio.to_thread(
            self.detector.predict, images, threshold=self.threshold
        )
        replies = []
        for result in results:
            if isinstance(result, headclip.ImageError):
                replies.append({"error": result.reason})
            else:
                reply = {name: getattr(result, name) for name in FIELDS}
                reply.update(threshold=result.threshold, anomalous=result.anomalous)
                replies.append(reply)
        return replies

    async def __call__(self, request: Request) -> JSONResponse:
        reply = await self.detect(await request.body())
        return JSONResponse(reply, status_code=422 if "error" in reply else 200)


def app_builder(args: dict[str, str]) -> serve.Application:
    """``serve run examples.ray_serve:app weights=... [params=...] [threads=N]``."""
    return HeadclipDetector.bind(
        args["weights"],
        params=args.get("params"),
        threads=int(args.get("threads", 1)),
        threshold=float(args.get("threshold", 0.5)),
    )


app = app_builder
