"""The web interface: pages served by ``tessera serve`` itself (``pages.py``) and the JSON they need
beyond the API (``api.py``, with the dashboard's ``sampler.py``)."""

from fastapi import APIRouter

from tessera.web.ui import api, pages

router = APIRouter()
router.include_router(api.router)
router.include_router(pages.router)

__all__ = ["router"]
