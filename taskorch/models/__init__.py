"""The shapes of everything the API accepts and answers, as msgspec structs.

Input is validated field by field so that a client learns every problem at once, each with its
path (``steps[3].url``); the OpenAPI document is generated from these same structs.

One module per domain (``tasks``, ``orchestrations``, ``schedules``, ``queues``, ``functions``,
``auth``), what they share (``shared``: field types, call policy, callback, the error answer),
times and durations (``times``), decoding with every problem reported (``decode``), and each rule
stated once with its JSON Schema (``rules``). Each module names its own in ``__all__``; all of
them are re-exported here, so ``from taskorch.models import X`` is the way in.
"""

from taskorch.models import (
    auth,
    decode,
    functions,
    orchestrations,
    queues,
    schedules,
    shared,
    tasks,
    times,
)
from taskorch.models.auth import *  # noqa: F403
from taskorch.models.decode import *  # noqa: F403

# tests/test_models.py holds the one-pass decode to the field-by-field walk.
from taskorch.models.decode import _decode_valid as _decode_valid
from taskorch.models.functions import *  # noqa: F403
from taskorch.models.orchestrations import *  # noqa: F403
from taskorch.models.queues import *  # noqa: F403

# QUEUE_NAME_MESSAGE and queue_name_ok are re-exported: the API and the queues use them.
from taskorch.models.rules import QUEUE_NAME_MESSAGE, queue_name_ok
from taskorch.models.schedules import *  # noqa: F403
from taskorch.models.shared import *  # noqa: F403
from taskorch.models.tasks import *  # noqa: F403
from taskorch.models.times import *  # noqa: F403

__all__ = [
    "QUEUE_NAME_MESSAGE",
    "queue_name_ok",
    *auth.__all__,
    *decode.__all__,
    *functions.__all__,
    *orchestrations.__all__,
    *queues.__all__,
    *schedules.__all__,
    *shared.__all__,
    *tasks.__all__,
    *times.__all__,
]
