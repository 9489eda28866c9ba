"""``taskorch worker``: the process around one :class:`~taskorch.worker.Worker`."""

from __future__ import annotations

import asyncio
import contextlib

from taskorch.settings import Settings
from taskorch.signing import Signer, SigningStore
from taskorch.store import Redis, Store, until_reachable
from taskorch.worker import outbound
from taskorch.worker.core import Worker
from taskorch.worker.leases import LeaseTimes


def run_worker(settings: Settings) -> None:
    """Entry point of ``taskorch worker``: runs until SIGTERM/SIGINT, then drains."""
    import signal

    from taskorch.logs import configure
    from taskorch.store import connect

    configure(fmt=settings.log_format, level=settings.log_level)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        timeout_s = LeaseTimes(settings.lease_s).socket_timeout_s

        def make_redis() -> Redis:
            return connect(
                settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )

        redis = make_redis()
        # The old single-node layout's tasks would never fire here: stop, naming the way out.
        from taskorch.oldlayout import refuse_old_layout

        # (on a client of its own: one used before the worker's own start kept the worker from
        # exiting on SIGTERM, tests/test_misc.py::test_worker_needs_no_token_settings)
        async def check_layout() -> None:
            probe = make_redis()
            try:
                await refuse_old_layout(probe)
            finally:
                await probe.aclose()

        try:
            await until_reachable(check_layout, what="layout_check")
        except BaseException:
            await redis.aclose()
            raise
        store = Store(redis)
        async with outbound.make_session(
            allow_private=settings.allow_private_targets, trusted_url=settings.public_url
        ) as session:
            from taskorch.worker.steps import handlers

            signer = Signer(SigningStore(redis))
            worker = Worker(
                store,
                session,
                signer=signer,
                lease_s=settings.lease_s,
                max_in_flight=settings.max_in_flight,
                handlers=handlers(store, session, signer),
                shutdown_grace_s=settings.shutdown_grace_s,
                retention_s=settings.retention_s,
                lease_redis=make_redis,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            await worker.run()
        await redis.aclose()

    asyncio.run(main())
