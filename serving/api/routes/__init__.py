from fastapi import APIRouter

from serving.api.routes import admin, continuation, health, metrics, root

api_router = APIRouter()
api_router.include_router(continuation.router)
api_router.include_router(health.router)
api_router.include_router(metrics.router)
api_router.include_router(admin.router)
api_router.include_router(root.router)
