"""Functions that garble the frame protocol: stray output, spam, results too large to send.

Answers travel on a pipe of their own, stdout and stderr are only the log, and every bootstrap
bounds a result before it is sent (issue #19, item 5).
"""

from __future__ import annotations

import pytest

from taskorch.functions import FunctionError, LocalRuntime
from tests.hostile.conftest import build, needs_java, needs_node, needs_root

pytestmark = needs_root

# Stray output on stdout in every form a runtime offers: the JVM's own warnings ("Failed to
# start thread", on fd 1) when the pids limit stops thread 49 of 10,000; a child inheriting
# stdout; raw writes to fds 1 and 2; and (node) 8 MB to stderr and stdout at once, more than
# the log pipe holds, which libuv's non-blocking pipes answered with EAGAIN ("node-spam": that
# alone).
STRAY = {
    "python": """
import os, subprocess, sys

def handler(event, context):
    print('{"id": 1, "ok": true, "result": "forged"}')
    os.write(1, b"not json\\n{")
    sys.stdout.flush()
    subprocess.run(["echo", "from a child"], check=True)
    os.write(2, b"z" * (4 << 20) + b"\\n")
    return {"answered": True}
""",
    "node": """
const fs = require('fs');
const { execFileSync } = require('child_process');

exports.handler = async () => {
  console.log('{"id": 1, "ok": true, "result": "forged"}');
  fs.writeSync(1, 'not json\\n{');
  execFileSync('echo', ['from a child'], { stdio: 'inherit' });
  const chunk = 'z'.repeat(1 << 20) + '\\n';
  for (let i = 0; i < 8; i++) fs.writeSync(2, chunk);
  for (let i = 0; i < 8; i++) fs.writeSync(1, chunk);
  return { answered: true };
};
""",
    "node-spam": """
const fs = require('fs');

exports.handler = async () => {
  const chunk = 'z'.repeat(1 << 20) + '\\n';
  for (let i = 0; i < 8; i++) fs.writeSync(2, chunk);
  return { answered: true };
};
""",
    "java": """
import java.util.*;

public class Attack {
    public Object handle(Map<String, Object> event) throws Exception {
        System.out.println("{\\"id\\": 1, \\"ok\\": true, \\"result\\": \\"forged\\"}");
        new ProcessBuilder("echo", "from a child").inheritIO().start().waitFor();
        int started = 0;
        try {
            for (int i = 0; i < 10000; i++) {
                Thread t = new Thread(() -> {
                    try { Thread.sleep(600000); } catch (InterruptedException e) { }
                });
                t.setDaemon(true);
                t.start();
                started++;
            }
        } catch (OutOfMemoryError e) {
            // "unable to create native thread": the instance's pids limit
        }
        Map<String, Object> out = new HashMap<>();
        out.put("answered", true);
        out.put("threads", started < 10000);
        return out;
    }
}
""",
}

RUNTIMES = [
    pytest.param("python"),
    pytest.param("node", marks=needs_node),
    pytest.param("java", marks=needs_java),
]


@pytest.mark.parametrize("case", [*RUNTIMES, pytest.param("node-spam", marks=needs_node)])
async def test_stray_output_is_logged_and_the_answer_arrives(case: str, rt: LocalRuntime) -> None:
    runtime = case.partition("-")[0]
    await build(rt, f"fn_stray_{runtime}", runtime, STRAY[case])

    result = await rt.invoke(f"fn_stray_{runtime}", {})

    assert isinstance(result, dict) and result.get("answered") is True, result


# 400 MB as one string (node builds it as a rope, cheap until serialized), 7 MB elsewhere: over
# the 6 MB a result may be. Each is refused with a clear error, and the instance serves on.
LARGE = {
    "python": """
import os
TOKEN = os.urandom(8).hex()

def handler(event, context):
    return "x" * (7 << 20) if event["large"] else TOKEN
""",
    "node": """
const TOKEN = String(Math.random());
exports.handler = async (event) => (event.large ? 'x'.repeat(400e6) : TOKEN);
""",
    "java": """
import java.util.*;

public class Attack {
    static final String TOKEN = UUID.randomUUID().toString();

    public Object handle(Map<String, Object> event) {
        if (Boolean.TRUE.equals(event.get("large"))) {
            return List.of("x".repeat(7 << 20));
        }
        return TOKEN;
    }
}
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_result_over_the_limit_is_a_clear_error(runtime: str, rt: LocalRuntime) -> None:
    await build(rt, f"fn_large_{runtime}", runtime, LARGE[runtime])
    token = await rt.invoke(f"fn_large_{runtime}", {"large": False})

    with pytest.raises(FunctionError) as caught:
        await rt.invoke(f"fn_large_{runtime}", {"large": True})

    assert "the result is larger than 6 MB" in caught.value.message, caught.value.message
    assert await rt.invoke(f"fn_large_{runtime}", {"large": False}) == token, (
        "not the same instance"
    )
