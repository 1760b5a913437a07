"""The HTTP application: one cache engine, routers per area."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tessera import __version__
from tessera.cache import CacheEngine
from tessera.cluster import open_cluster
from tessera.config import Settings
from tessera.hosting.service import DERIVE_JOB, open_hosting
from tessera.images.lazy import LazyImageService
from tessera.ingest.bulk_import import BulkImport
from tessera.jobs import Handler, JobService, open_queue
from tessera.metrics import Metrics
from tessera.origins import warn_about_missing_buckets
from tessera.storage import StorageManager
from tessera.storage.leases import LeaseBook
from tessera.storage.retrieve import Retriever
from tessera.web import (
    cache_ops,
    files,
    hosting,
    ingest_api,
    jobs_api,
    listings,
    ops,
    readiness,
    retrieve,
    stats,
    tus,
    writes,
)
from tessera.web.access_log import AccessLog
from tessera.web.asgi import ASGIApp
from tessera.web.errors import install_error_handlers
from tessera.web.iiif import IiifRoutes
from tessera.web.limits import BodyLimit, RequestLimit
from tessera.web.openapi import install_openapi
from tessera.web.ui import router as ui_router
from tessera.web.ui.sampler import Sampler

#: Threads for blocking I/O calls (see ``lifespan``).
IO_THREADS = 32


def create_app(settings: Settings) -> ASGIApp:
    """The ASGI application: the access log, the bounds on requests in progress and on bodies, then the
    IIIF layer in front of the FastAPI application (see ``web.iiif``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking file and database calls (cache blocks, origin folders, fsyncs, SQLite) go to the
        # loop's default pool, which Python sizes at cores + 4 (6 here): a few slow fsyncs then hold
        # up every cache read. They wait on the disk, not the CPU, so the pool is larger.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(IO_THREADS, thread_name_prefix="tessera-io")
        )
        metrics = Metrics()
        cluster = app.state.cluster = open_cluster(settings, metrics)
        engine = CacheEngine(settings, metrics=metrics, admission=cluster.admission)
        await engine.start()
        app.state.engine = engine
        app.state.images = LazyImageService(engine, settings.images)
        app.state.storage = StorageManager(engine, settings, cluster)
        handlers: dict[str, Handler] = {"import": BulkImport(app.state.storage, settings, engine.metrics)}
        app.state.hosting = await open_hosting(engine, app.state.storage, settings)
        if app.state.hosting is not None:
            handlers[DERIVE_JOB] = app.state.hosting.derive
        app.state.upload_rate = cluster.upload_rate(settings.hosting.uploads_per_minute)
        app.state.jobs = JobService(
            open_queue(settings), handlers, settings.jobs.workers, engine.metrics, settings.jobs.keep_finished
        )
        if app.state.hosting is not None:
            app.state.hosting.jobs = app.state.jobs
        await app.state.jobs.start()
        await cluster.start(engine, app.state.hosting)
        readiness.ready_checks(app).add("jobs", app.state.jobs.queue.ping)
        leases = await LeaseBook.open(engine, settings.cache.dir / "leases.sqlite")
        app.state.retriever = Retriever(engine, leases)
        app.state.sampler = Sampler(engine).start()
        namespace = engine.namespace
        bucket_check = asyncio.create_task(
            warn_about_missing_buckets(namespace.origin(mount) for mount in namespace.mounts)
        )
        try:
            yield
        finally:
            bucket_check.cancel()
            await app.state.sampler.stop()
            await leases.close()
            await app.state.jobs.stop()
            if app.state.hosting is not None:
                await app.state.hosting.close()
            await cluster.close()  # after the jobs, whose last writes it still sends
            await engine.close()

    app = FastAPI(title="Tessera", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(ops.router)
    app.include_router(files.router)
    app.include_router(writes.router)
    app.include_router(listings.router)
    app.include_router(cache_ops.router)
    app.include_router(jobs_api.router)
    app.include_router(ingest_api.router)
    app.include_router(retrieve.router)
    app.include_router(readiness.router)
    app.include_router(stats.router)
    app.include_router(tus.router)
    app.include_router(hosting.router)
    app.include_router(ui_router)
    served = RequestLimit(BodyLimit(IiifRoutes(app)), settings.server.max_requests)
    return AccessLog(served) if settings.server.access_log else served
